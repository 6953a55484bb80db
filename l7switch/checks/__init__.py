"""Active health checks and agent feedback, the I/O side: probes (probes.py) judged sans-IO
(verdicts.py), run per server by the checker (checker.py), whose results the pools count
(balance/health.py, ServerPool.check_result / agent_result). Imports spec, net, http and balance;
never proxy, passthrough or runtime."""
