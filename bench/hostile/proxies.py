"""The processes of bench/hostile: the nginx origin (with an /upload that reads a whole body
before answering), l7switch and HAProxy with their self-protection settings, and /proc readings."""
from __future__ import annotations

import copy
import json
import os
import re
import resource
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
REPO = BENCH.parent
#: The l7switch source tree measured (run.py --l7switch-tree): this one unless told otherwise.
TREE = {"path": REPO}
sys.path.insert(0, str(BENCH))

import benchlib as bl

NORMAL_ADDR = "127.0.0.1"  # wrk's source address


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


# =========================================================================== origin


def start_origin(procs: bl.Procs, tmp: Path, nginx: str) -> int:
    """bench/run.py's nginx origin (/100b...), plus /upload: nginx reads the whole request body
    (proxy_pass buffers it) before it fetches /100b from itself, so a slow upload stays open."""
    port = bl.free_port()
    conf = bl.write_origin(tmp, port)
    text = conf.read_text()
    upload = f"""    location = /upload {{
      client_max_body_size 2m;
      proxy_method GET;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_pass http://127.0.0.1:{port}/100b;
    }}
"""
    text = text.replace("    index index.html;\n", "    index index.html;\n" + upload, 1)
    conf.write_text(text)
    proc = procs.start("origin", [nginx, "-p", str(tmp), "-c", str(conf)])
    err = bl.wait_port(port, proc)
    if err:
        raise RuntimeError(f"origin nginx failed: {err}\n{procs.log_tail('origin')}")
    return port


# =========================================================================== proxies


@dataclass
class Settings:
    """The self-protection settings both proxies get (CLI flags of run.py)."""
    header_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    client_timeout: float = 60.0
    per_client_conns: int = 100
    per_client_rps: int = 1000
    per_client_burst: int = 2000
    min_body_rate: str = "500B/s"
    l7_max_connections: int | None = None  # None: l7switch's default (derived from the fd limit)
    haproxy_maxconn: int = 0  # 0: derived here from the hard fd limit
    exempt_normal: bool = True  # the wrk address is trusted / not tracked on both proxies


@dataclass
class Proxy:
    name: str
    port: int
    pid: int
    log_name: str
    config_text: str
    dropped_keys: list[str] = field(default_factory=list)  # rule-file keys this l7switch refused
    maxconn: int | None = None  # HAProxy's maxconn


def l7switch_rules(port: int, origin: int, s: Settings) -> dict[str, Any]:
    per_client: dict[str, Any] = {"connections": s.per_client_conns,
                                  "requests_per_second": s.per_client_rps, "burst": s.per_client_burst}
    if s.exempt_normal:
        per_client["trusted"] = [f"{NORMAL_ADDR}/32"]
    limits: dict[str, Any] = {"per_client": per_client, "min_body_rate": s.min_body_rate}
    if s.l7_max_connections is not None:
        limits["max_connections"] = s.l7_max_connections
    return {
        "listen": [{"address": f"127.0.0.1:{port}"}],
        "pools": {"origin": {"servers": [f"127.0.0.1:{origin}"]}},
        "default_pool": "origin",
        "timeouts": {"header": f"{s.header_timeout:g}s", "keepalive": f"{s.keepalive_timeout:g}s",
                     "client": f"{s.client_timeout:g}s"},
        "limits": limits,
    }


def _yaml(rules: dict[str, Any]) -> str:
    # JSON is YAML's flow style: one top-level key per line, values as JSON.
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in rules.items())


_UNKNOWN = re.compile(r"(\S+): unknown key '([^']+)'")


def _drop(node: Any, section: str, key: str, path: str = "") -> list[str]:
    """Remove ``key`` wherever it sits in a mapping named like ``section``'s last part."""
    out: list[str] = []
    if isinstance(node, dict):
        last = path.rsplit(".", 1)[-1]
        if key in node and (not path or last == section.rsplit(".", 1)[-1]):
            del node[key]
            out.append(f"{path}.{key}" if path else key)
        for k, v in list(node.items()):
            out += _drop(v, section, key, f"{path}.{k}" if path else k)
    return out


def l7switch_command(cfg: Path) -> tuple[list[str], dict[str, str]]:
    """``python -m l7switch`` of the tree this bench lives in (not whatever the venv points at);
    $L7SWITCH_CMD overrides the program, as in bench/run.py."""
    env = {**os.environ, "PYTHONPATH": str(TREE["path"])}
    if os.environ.get("L7SWITCH_STALLWATCH"):  # run.py --stallwatch: stallwatch/sitecustomize.py
        env["PYTHONPATH"] = f"{HERE / 'stallwatch'}{os.pathsep}{env['PYTHONPATH']}"
    if os.environ.get("L7SWITCH_CMD"):
        return bl.l7switch_cmd(cfg), dict(os.environ)
    return [sys.executable, "-m", "l7switch", "run", "-c", str(cfg)], env


def write_l7switch(tmp: Path, port: int, origin: int, s: Settings) -> tuple[Path, str, list[str]]:
    """Write the rule file; keys ``l7switch check`` does not know yet (a tree from before the
    self-protection work) are dropped and named, so the same run works before and after."""
    rules = l7switch_rules(port, origin, s)
    cfg = tmp / "l7switch.yaml"
    dropped: list[str] = []
    for _ in range(6):
        cfg.write_text(_yaml(rules))
        cmd, env = l7switch_command(cfg)
        check = cmd[:-3] + ["check", str(cfg)]
        r = subprocess.run(check, check=False, env=env, cwd=tmp, capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            return cfg, cfg.read_text(), dropped
        found = _UNKNOWN.findall(r.stdout + r.stderr)
        if not found:
            raise RuntimeError(f"l7switch check refused the rule file:\n{r.stdout}{r.stderr}\n{cfg.read_text()}")
        before = copy.deepcopy(rules)
        for section, key in found:
            dropped += _drop(rules, section, key)
        if rules == before:
            raise RuntimeError(f"could not drop unknown keys {found}:\n{r.stdout}{r.stderr}")
    raise RuntimeError("l7switch check: too many rounds of unknown keys")


def haproxy_maxconn(s: Settings) -> int:
    if s.haproxy_maxconn:
        return s.haproxy_maxconn
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    # HAProxy's maxsock = 2 × maxconn + 2 × maxpipes (maxconn / 4 with splicing) + a few:
    # 2.5 fds per connection, as HAProxy itself derives maxconn from ulimit-n.
    return int((hard - 200) / 2.5)


def haproxy_config(tmp: Path, port: int, origin: int, s: Settings) -> tuple[Path, int]:
    maxconn = haproxy_maxconn(s)
    track_if = f" if !{{ src {NORMAL_ADDR} }}" if s.exempt_normal else ""
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(f"""global
  nbthread 1
  maxconn {maxconn}
  pidfile {tmp}/haproxy.pid
  # notice and above only: no per-request lines, but "reached maxconn"-style alerts
  log stderr format raw local0 notice

defaults
  mode http
  log global
  option dontlognull
  option splice-auto
  # The body before the server, bounded by timeout http-request: l7switch's limits.buffer_body
  option http-buffer-request
  http-reuse always
  timeout connect 5s
  timeout client {s.client_timeout:g}s
  timeout server 60s
  timeout http-request {s.header_timeout:g}s
  timeout http-keep-alive {s.keepalive_timeout:g}s

frontend fe
  bind 127.0.0.1:{port}
  maxconn {maxconn}
  stick-table type ip size 100k expire 30s store conn_cur,http_req_rate(1s)
  tcp-request connection track-sc0 src{track_if}
  tcp-request connection reject if {{ sc_conn_cur(0) gt {s.per_client_conns} }}
  http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt {s.per_client_rps} }}
  default_backend be

backend be
  server origin 127.0.0.1:{origin}
""")
    return cfg, maxconn


def start_proxy(name: str, procs: bl.Procs, tmp: Path, tools: dict[str, str], origin: int,
                s: Settings) -> Proxy:
    port = bl.free_port()
    log_name = f"{name}-{port}"
    dropped: list[str] = []
    maxconn = None
    env = None
    if name == "haproxy":
        cfg, maxconn = haproxy_config(tmp, port, origin, s)
        cmd = [tools["haproxy"], "-f", str(cfg), "-db"]
    else:
        cfg, _, dropped = write_l7switch(tmp, port, origin, s)
        cmd, env = l7switch_command(cfg)
    log(f"start {name}: {' '.join(cmd)}" + (f" (dropped keys: {', '.join(dropped)})" if dropped else ""))
    proc = procs.start(log_name, cmd, env=env)
    err = bl.wait_port(port, proc, timeout=15.0)
    if err:
        tail = procs.log_tail(log_name)
        procs.stop(log_name)
        raise RuntimeError(f"{name} failed to start ({err})\n{tail}")
    return Proxy(name, port, proc.pid, log_name, cfg.read_text(), dropped, maxconn)


def log_text(procs: bl.Procs, p: Proxy) -> str:
    return procs.log_tail(p.log_name, lines=100000)


# =========================================================================== /proc


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def rss(pid: int) -> int:
    return bl.rss_bytes(pid)


def tool_versions(tools: dict[str, str]) -> dict[str, str]:
    def first(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"
    rev = first(["git", "-C", str(TREE["path"]), "log", "-1", "--format=%h %s"])
    return {
        "l7switch": rev,
        "haproxy": first([tools["haproxy"], "-v"]).split(" - ")[0].replace("HAProxy version ", ""),
        "nginx": first([tools["nginx"], "-v"]).replace("nginx version: ", ""),
        "wrk": first([tools["wrk"], "--version"]).split(" Copyright")[0].replace("wrk ", ""),
        "python": sys.version.split()[0],
    }
