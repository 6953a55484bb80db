"""Shared helpers for the l7switch benchmark scripts (run.py, idle_conns.py).

Everything here is deliberately stdlib-only so the scripts run on a fresh
machine with nothing but the project venv and the apt packages below.
"""
from __future__ import annotations

import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Sequence

TOOLS = ("haproxy", "nginx", "wrk")
# nginx/haproxy live in /usr/sbin, which is not on PATH for every user.
EXTRA_PATHS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def which(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    for d in EXTRA_PATHS:
        p = Path(d) / tool
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def ensure_tools(tools: Sequence[str] = TOOLS) -> dict[str, str]:
    """Return {tool: path}; apt-get install whatever is missing (fresh machines)."""
    missing = [t for t in tools if which(t) is None]
    if missing:
        sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else [])
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = sudo + ["apt-get", "install", "-y", *missing]
        print(f"# installing missing tools: {' '.join(missing)}", file=sys.stderr)
        if subprocess.run(install, env=env).returncode != 0:
            # Fresh images often have an empty package index: update and retry once.
            subprocess.run(sudo + ["apt-get", "update"], env=env)
            subprocess.run(install, env=env)
    paths = {t: which(t) for t in tools}
    still = [t for t, p in paths.items() if p is None]
    if still:
        sys.exit(f"error: could not install {' '.join(still)} (try: apt-get install -y {' '.join(still)})")
    return {t: p for t, p in paths.items() if p}


def free_port() -> int:
    """Ask the kernel for an unused 127.0.0.1 port (tiny race, fine for a bench)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile(want: int = 65536) -> tuple[int, int]:
    """Raise RLIMIT_NOFILE as far as allowed; returns the resulting (soft, hard).

    Root can raise the hard limit too; everybody else gets soft = hard.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in ((max(want, hard), max(want, hard)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, target)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _child_nofile() -> None:
    # preexec_fn for servers: lots of fds for 10k idle conns (ignore failures).
    raise_nofile(65536)


# --------------------------------------------------------------------------- processes


class Procs:
    """Starts servers in their own sessions and guarantees they are all killed.

    Each child gets start_new_session=True so (a) a terminal Ctrl-C only reaches us,
    letting us shut down in order, and (b) killpg() also reaches nginx workers etc.
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes], Path]] = []

    def start(self, name: str, cmd: Sequence[str], cwd: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log_path = self.tmp / f"{name}.log"
        log = open(log_path, "wb")
        proc = subprocess.Popen(
            list(cmd), cwd=cwd or self.tmp, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_child_nofile,
            env=env,
        )
        self.procs.append((name, proc, log, log_path))
        return proc

    def log_tail(self, name: str, lines: int = 15) -> str:
        for n, _, log, path in self.procs:
            if n == name:
                log.flush()
                text = path.read_text(errors="replace").strip().splitlines()
                return "\n".join(text[-lines:])
        return ""

    def stop(self, name: str) -> None:
        for item in list(self.procs):
            if item[0] == name:
                _kill_group(item[1])
                item[2].close()
                self.procs.remove(item)

    def stop_all(self) -> None:
        # A second Ctrl-C must not abort the cleanup half-way: ignore signals meanwhile.
        saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            # Reverse order: proxies first, origin last.
            for name, *_ in reversed(list(self.procs)):
                self.stop(name)
        finally:
            for sig, h in saved.items():
                signal.signal(sig, h)


def _kill_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the child's process group, then SIGKILL after a grace period."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if pgid is not None:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # nginx workers may outlive the master by a moment; make sure the group is gone.
    if pgid is not None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def cleanup(procs: Procs, tmp: Path, keep_tmp: bool) -> None:
    """Stop every process a script started and remove (or report) its temp dir."""
    procs.stop_all()
    if keep_tmp:
        print(f"# temp dir kept: {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def install_sigterm_handler() -> None:
    """Turn SIGINT/SIGTERM/SIGHUP into KeyboardInterrupt so `finally:` cleanup runs.

    SIGINT is set explicitly because shells start background jobs with it ignored.
    """
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> str | None:
    """Wait until 127.0.0.1:port accepts; returns an error string or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"process exited with code {proc.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return None
        except OSError:
            time.sleep(0.1)
    return f"port {port} not open after {timeout:.0f} s"


# --------------------------------------------------------------------------- /proc accounting


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces/parens: split after the *last* ')'. rest[0] is field 3 (state).
    return raw[raw.rindex(")") + 2:].split()


def process_tree(root: int) -> list[int]:
    """root plus all live descendants (nginx master -> worker, forked workers, ...)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f:
                children.setdefault(int(f[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(root: int) -> float:
    """utime+stime summed over the process tree (all threads are included per process).

    cutime/cstime are added too: they only hold *reaped* children, which are no
    longer in the tree, so nothing is double-counted (covers respawned workers).
    """
    ticks = 0
    for pid in process_tree(root):
        f = _stat_fields(pid)
        if f:
            ticks += sum(int(x) for x in f[11:15])  # utime stime cutime cstime
    return ticks / CLK_TCK


def rss_bytes(root: int) -> int:
    """VmRSS summed over the process tree, in bytes."""
    total = 0
    for pid in process_tree(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


# --------------------------------------------------------------------------- origin / l7switch


def nginx_common(tmp: Path) -> str:
    """Top of every nginx config: everything inside tmp, nothing in /etc or /var."""
    # As root the workers would drop to 'nobody' and could not read our 0700 temp dir
    # nor write proxy_temp; running them as root is fine for a loopback benchmark.
    user = "user root;" if os.geteuid() == 0 else ""
    # Stay within what we may actually get (some sandboxes cap the hard limit).
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 65536 if nofile == resource.RLIM_INFINITY else min(nofile, 65536)
    return f"""{user}
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/NAME.pid;
error_log {tmp}/NAME.error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {nofile - 100}; }}
"""


def nginx_http_paths(tmp: Path, name: str) -> str:
    d = tmp / f"{name}.tmp"
    d.mkdir(exist_ok=True)
    return "\n".join(
        f"  {k}_temp_path {d}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


SIZES = {"100b": 100, "10k": 10 * 1024, "1m": 1024 * 1024}


def write_origin(tmp: Path, port: int) -> Path:
    """nginx serving static files /100b, /10k, /1m and / (index.html)."""
    www = tmp / "www"
    www.mkdir(exist_ok=True)
    for name, size in SIZES.items():
        # Deterministic, non-compressible-ish content so the body check is meaningful.
        block = bytes((i * 7 + 13) % 251 for i in range(4096))
        (www / name).write_bytes((block * (size // len(block) + 1))[:size])
    (www / "index.html").write_bytes(b"ok\n")
    conf = tmp / "origin.conf"
    conf.write_text(nginx_common(tmp).replace("NAME", "origin") + f"""
http {{
  access_log off;
{nginx_http_paths(tmp, "origin")}
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    root {www};
    index index.html;
  }}
}}
""")
    return conf


def start_origin(procs: Procs, tmp: Path, nginx: str) -> int:
    port = free_port()
    conf = write_origin(tmp, port)
    proc = procs.start("origin", [nginx, "-p", str(tmp), "-c", str(conf)])
    err = wait_port(port, proc)
    if err:
        raise RuntimeError(f"origin nginx failed: {err}\n{procs.log_tail('origin')}")
    return port


#: ``--persistence`` choices: the pool's persistence section ("cookie-sticky" is cookie insert
#: with every wrk request carrying the cookie, see ``persistence_header``).
PERSISTENCE = {
    "none": "",
    "cookie": "    persistence: {cookie: {name: SRVID, mode: insert}}\n",
    "cookie-sticky": "    persistence: {cookie: {name: SRVID, mode: insert}}\n",
    "source": "    persistence: {source: {timeout: 300s}}\n",
}


#: run.py and instructions.py --features: what a typical site turns on, added to the plain
#: pool: rules with regexes and host matches tried before the one that matches (first match
#: wins, so every request walks them), cookie persistence (insert: wrk keeps no cookies, so
#: every response sets one), HTTP health checks every second, and the access log to a file.
FEATURES = """rules:
  - {name: api, match: {host: api.example.com, path_prefix: /v1/}, pool: origin}
  - {name: admin, match: {path_regex: '^/admin/(users|groups)/[0-9]+$'}, pool: origin}
  - {name: images, match: {host: '*.example.com', extension: [png, jpg, gif, svg]}, pool: origin}
  - {name: beta, match: {any: [{header: {X-Beta: '^(1|yes)$'}}, {cookie: {beta: '^1$'}}]}, pool: origin}
  - {name: pages, match: {path_regex: '^/[0-9a-z]+$'}, pool: origin}
"""


def write_l7switch_config(tmp: Path, port: int, origin_port: int, scheduler: str = "rr",
                          persistence: str = "none", tls: tuple[Path, Path, Path] | None = None,
                          name: str = "l7switch", features: bool = False) -> Path:
    """One pool in front of the origin; ``features``: with FEATURES (cookie persistence
    instead of ``persistence``, HTTP checks, the rules, the access log to tmp/access-NAME.log)."""
    cfg = tmp / f"{name}.yaml"
    tls_line = f"    tls: {{cert: {tls[0]}, key: {tls[1]}}}\n" if tls else ""
    health_line = "    health: {http: {path: /100b}, interval: 1s}\n" if features else ""
    persistence_lines = PERSISTENCE["cookie" if features else persistence]
    log = tmp / f"access-{name}.log"
    extra = FEATURES + f"log: {{access: {log}, format: combined}}\n" if features else ""
    cfg.write_text(f"""listen:
  - address: 127.0.0.1:{port}
{tls_line}pools:
  origin:
    scheduler: {scheduler}
    servers: [127.0.0.1:{origin_port}]
{health_line}{persistence_lines}default_pool: origin
{extra}""")
    return cfg


def persistence_header(persistence: str, origin_port: int) -> str | None:
    """The Cookie header wrk sends for "cookie-sticky": the id the switch gives the one server,
    so each request takes the sticky path (lookup, Cookie rewrite) and no response sets one.
    "cookie" sends none, so every response inserts Set-Cookie (wrk keeps no cookies)."""
    if persistence != "cookie-sticky":
        return None
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from l7switch.balance.persistence import server_cookie_id

    return f"Cookie: a=1; SRVID={server_cookie_id('origin', f'127.0.0.1:{origin_port}')}"


def package_cmd(config: Path, package_dir: Path | None) -> tuple[list[str], dict[str, str] | None]:
    """``python -m l7switch run -c CONFIG`` with this interpreter (its venv has the
    dependencies), and the environment that puts the l7switch package in ``package_dir`` first
    (another source tree, or build/compiled); None: this tree's, the environment unchanged."""
    cmd = [sys.executable, "-m", "l7switch", "run", "-c", str(config)]
    return cmd, ({**os.environ, "PYTHONPATH": str(package_dir)} if package_dir is not None else None)


def l7switch_cmd(config: Path) -> list[str]:
    """Prefer the venv console script next to our interpreter; else `python -m l7switch`.

    $L7SWITCH_CMD overrides the program (e.g. another checkout's venv); `run -c FILE`
    is appended to it.
    """
    if override := os.environ.get("L7SWITCH_CMD"):
        return shlex.split(override) + ["run", "-c", str(config)]
    script = Path(sys.executable).parent / "l7switch"
    if script.exists():
        return [str(script), "run", "-c", str(config)]
    return [sys.executable, "-m", "l7switch", "run", "-c", str(config)]


def run_bounded(cmd: list[str], seconds: float) -> tuple[str, str | None]:
    """Run a load generator (wrk) that should end after ``seconds``; kill it 20 s later at the
    latest. Returns (its output, an error or None)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=seconds + 20)
    except subprocess.TimeoutExpired:
        return "", f"wrk did not finish within {seconds + 20} s"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        return text, f"wrk exited {proc.returncode}: {text.strip()[-300:]}"
    return text, None


def write_tls_files(tmp: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for localhost/127.0.0.1 (trustme, a test dependency):
    (certificate, key, certificate+key for HAProxy's ``crt``); the CA lands beside as ``.ca``."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    pem, key, both = tmp / "site.pem", tmp / "site.key", tmp / "site-combined.pem"
    cert.cert_chain_pems[0].write_to_path(str(pem))
    cert.private_key_pem.write_to_path(str(key))
    both.write_bytes(pem.read_bytes() + key.read_bytes())
    ca.cert_pem.write_to_path(str(pem.with_suffix(".ca")))
    return pem, key, both
