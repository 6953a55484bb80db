-- wrk script: GET /obj/<id> with Zipf(alpha) popularity over `objects` objects
-- (independent reference model; object id = popularity rank - 1, so /obj/0 is the hottest).
--
--   wrk -t1 -c64 -d10s --latency -s bench/locality/zipf.lua http://127.0.0.1:8080 -- 0.8 20000 1
--
-- Arguments after `--`: alpha objects seed. Missing ones come from the environment variables
-- ZIPF_ALPHA, ZIPF_OBJECTS, ZIPF_SEED, then default to 0.8, 20000, 1. Each wrk thread seeds its
-- own generator with seed + thread number, so runs are repeatable.
-- The CDF is computed once per thread; each request is one binary search over it.

local counter = 0

function setup(thread)
   thread:set("tid", counter)
   counter = counter + 1
end

local alpha, objects, seed
local cdf = {}
local rnd = math.random

function init(args)
   alpha = tonumber(args[1] or os.getenv("ZIPF_ALPHA") or "0.8")
   objects = math.floor(tonumber(args[2] or os.getenv("ZIPF_OBJECTS") or "20000"))
   seed = math.floor(tonumber(args[3] or os.getenv("ZIPF_SEED") or "1"))
   local acc = 0.0
   for i = 1, objects do
      acc = acc + i ^ (-alpha)
      cdf[i] = acc
   end
   for i = 1, objects do
      cdf[i] = cdf[i] / acc
   end
   cdf[objects] = 1.0
   math.randomseed(seed + 7919 * (tid or 0))
end

-- smallest i with cdf[i] >= u
local function sample()
   local u = rnd()
   local lo, hi = 1, objects
   while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if cdf[mid] < u then
         lo = mid + 1
      else
         hi = mid
      end
   end
   return lo - 1
end

function request()
   return wrk.format("GET", "/obj/" .. sample())
end
