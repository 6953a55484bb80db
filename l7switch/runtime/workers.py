"""``workers: N``: a master process and N worker processes serving the same listeners.

The master never serves traffic. It opens, for every listener, one socket per worker slot, all
bound to the same address with SO_REUSEPORT, and keeps them for its whole life: a worker that
dies is replaced in the same slot on the same socket, so the connections waiting in that
socket's backlog are served by its replacement instead of being reset. A classic BPF program
on each reuseport group (SO_ATTACH_REUSEPORT_CBPF) picks the slot from the client's address, so
a client's connections always reach the same worker: source and SSL-session persistence, the
per-client limits and the locality schedulers' key tables of that worker see all of its
traffic, with no state shared between processes (the store interface, balance/store.py, stays
free to take a networked store for several hosts later).

Supervision: a worker that exits without being asked is logged and started again within a
second; SIGTERM to the master stops the workers (each finishes its requests, up to
``hard_stop_after``) and exits 0; SIGHUP (or ``ctl reload``) has the master check the file, then
every worker reload it (a file that adds or removes listeners gets new workers on the new set of
sockets instead, the old ones finishing their requests); a worker whose master is gone gets SIGTERM from the kernel
(PR_SET_PDEATHSIG) and stops. The admin socket is the master's: ``show info`` and ``reload`` are
its own; other commands go to every worker's socket (the admin path + ``.w<slot>``) and their
answers are merged (counters summed), so ``ctl`` sees one switch.

Health checks are the master's too: it probes each server once (not once per worker) and sends
every result, batched, to each worker's socket (``internal checks``); each worker counts them
into its pools as if it had probed (ServerPool.check_result takes values), so all workers agree
on what is up.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Any

from ..balance.health import AgentReply, CheckResult
from ..checks.checker import HealthChecker, needs_checker
from ..config import load_config
from ..errors import AdminError, ConfigError
from ..monitor import Observers
from ..stats import merge as merge_stats
from ..spec import Config
from ..version import build
from .admin import check_file, default_socket

log = logging.getLogger("l7switch")

SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)
RESTART_DELAY = 0.2  # seconds before a dead worker's replacement starts (well within 1 s)
RESULTS_BATCH = 0.05  # seconds check results gather before going to the workers in one message
PR_SET_PDEATHSIG = 1

# Classic BPF (linux/filter.h): load a word from the network header, modulo N, return it.
BPF_LD_W_ABS, BPF_ALU_MOD_K, BPF_RET_A = 0x20, 0x94, 0x16
SKF_NET_OFF = -0x100000


def steering_program(slots: int, ipv6: bool) -> bytes:
    """The CBPF program choosing a reuseport socket by the client's address: the last 32 bits
    of the source address (IPv4: offset 12 of the IP header; IPv6: offset 20) modulo ``slots``."""
    offset = SKF_NET_OFF + (20 if ipv6 else 12)
    insns = [(BPF_LD_W_ABS, 0, 0, offset & 0xFFFFFFFF), (BPF_ALU_MOD_K, 0, 0, slots), (BPF_RET_A, 0, 0, 0)]
    return b"".join(struct.pack("HBBI", *i) for i in insns)


def attach_steering(sock: socket.socket, slots: int) -> None:
    code = steering_program(slots, sock.family == socket.AF_INET6)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(buf))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def open_slots(config: Config, slots: int, only: set[str] | None = None) -> dict[str, list[socket.socket]]:
    """For every listener (or those keyed in ``only``), ``slots`` SO_REUSEPORT sockets on its
    address (port 0: the port the first one got), the steering program on the group. Keyed
    "host:port" as written."""
    out: dict[str, list[socket.socket]] = {}
    try:
        for spec in config.listeners:
            if only is not None and f"{spec.host}:{spec.port}" not in only:
                continue
            infos = socket.getaddrinfo(spec.host or None, spec.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
            family, type_, proto, _, addr = infos[0]
            group: list[socket.socket] = []
            out[f"{spec.host}:{spec.port}"] = group
            for _ in range(slots):
                s = socket.socket(family, type_, proto)
                group.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind(addr if not group[:-1] else group[0].getsockname())
                s.listen(4096)
                s.set_inheritable(True)
            if config.worker_steering == "address":
                attach_steering(group[0], slots)
    except BaseException:
        for group in out.values():
            for s in group:
                s.close()
        raise
    return out


class Master:
    """The master process: sockets, workers, signals, the admin socket."""

    def __init__(self, config: Config, slots: int, log_level: str) -> None:
        self.config = config
        self.slots = slots
        self.log_level = log_level
        self.sockets: dict[str, list[socket.socket]] = {}
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * slots
        self.stopping = False
        self.restarts = 0
        self.started = time.time()
        self.loaded_at = time.time()
        self.reloads = 0
        self.reloads_refused = 0
        self.admin_path = ""
        self.checker: HealthChecker | None = None
        self.retired: list[subprocess.Popen[bytes]] = []  # replaced workers finishing their requests
        self.generation = 0  # of workers: +1 each time a reload replaces them all
        self.results: list[list[Any]] = []  # check results not yet sent to the workers
        self.flushing = False
        self.observers = Observers(self)  # the monitor and /metrics: the master's, for all workers

    # ---- workers ----------------------------------------------------------------------------------
    def spawn(self, slot: int) -> None:
        fds = {key: group[slot].fileno() for key, group in self.sockets.items()}
        cmd = [sys.executable, "-m", "l7switch", "worker", "--slot", str(slot), "--of", str(self.slots),
               "--fds", json.dumps(fds),
               "--log-level", self.log_level, "--admin", self.worker_socket(slot) if self.admin_path else "",
               self.config.path]
        proc = subprocess.Popen(cmd, pass_fds=list(fds.values()))
        self.procs[slot] = proc
        log.info("worker %d started (pid %d)", slot, proc.pid)

    def worker_socket(self, slot: int) -> str:
        """A worker's admin socket; workers that replace others (a reload changing listeners)
        get new names while the old ones finish."""
        return f"{self.admin_path}.w{slot}" + (f"-{self.generation}" if self.generation else "")

    async def supervise(self) -> None:
        while not self.stopping:
            for slot, proc in enumerate(self.procs):
                if proc is not None and proc.poll() is not None and not self.stopping:
                    code = proc.returncode
                    how = f"signal {-code}" if code < 0 else f"exit {code}"
                    log.error("worker %d (pid %d) died (%s); starting another", slot, proc.pid, how)
                    self.procs[slot] = None
                    self.restarts += 1
                    await asyncio.sleep(RESTART_DELAY)
                    if not self.stopping:
                        self.spawn(slot)
            self.retired = [p for p in self.retired if p.poll() is None]
            await asyncio.sleep(0.1)

    def signal_workers(self, sig: int) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(sig)

    async def stop(self) -> None:
        self.stopping = True
        self.signal_workers(signal.SIGTERM)
        self.procs.extend(self.retired)
        deadline = time.monotonic() + self.config.hard_stop_after + 5
        while any(p is not None and p.poll() is None for p in self.procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.kill()

    # ---- health checks ----------------------------------------------------------------------------
    def start_checks(self) -> None:
        if needs_checker(self.config.pools):
            self.checker = HealthChecker(self.collect)
            self.checker.start(self.config.pools)

    async def stop_checks(self) -> None:
        if self.checker is not None:
            await self.checker.stop()
            self.checker = None

    def collect(self, pool: str, server: str, kind: str, reply: AgentReply | None, result: CheckResult) -> None:
        """A probe's result (checks/checker.Deliver): to every worker, within a loop turn or two."""
        self.results.append([pool, server, kind, dataclasses.asdict(reply) if reply is not None else None,
                             dataclasses.asdict(result)])
        if not self.flushing:
            self.flushing = True
            asyncio.get_running_loop().call_later(RESULTS_BATCH, lambda: asyncio.ensure_future(self.flush()))

    async def flush(self) -> None:
        batch, self.results = self.results, []
        self.flushing = False
        if batch and self.admin_path:
            line = json.dumps(batch)
            await asyncio.gather(*(self._ask(slot, ["internal", "checks", line]) for slot in range(self.slots)))

    # ---- reload -----------------------------------------------------------------------------------
    async def reload(self) -> dict[str, Any]:
        """Check the file here first; every worker reloads it only if it is sound."""
        try:
            config = await asyncio.to_thread(load_config, self.config.path)
        except ConfigError as exc:
            errors = [str(i) for i in exc.issues]
            for line in errors:
                log.error("reload refused: %s", line)
            self.reloads_refused += 1
            raise AdminError("reload refused; still serving the previous configuration:\n" + "\n".join(errors))
        try:
            plan = await self.observers.prepare(config)
        except OSError as exc:
            self.reloads_refused += 1
            msg = f"reload refused: cannot open the monitor or metrics listener: {exc.strerror or exc}"
            log.error("%s", msg)
            raise AdminError(msg) from None
        try:
            result = await self._reload(config)
        except BaseException:
            await self.observers.discard(plan)
            raise
        self.observers.commit(plan)
        return result

    async def _reload(self, config: Config) -> dict[str, Any]:
        keys = {f"{lst.host}:{lst.port}" for lst in config.listeners}
        if keys != set(self.sockets):
            return await self._replace_workers(config, keys)
        self.config = config
        await self.stop_checks()
        self.start_checks()
        self.signal_workers(signal.SIGHUP)
        self.reloads += 1
        self.loaded_at = time.time()
        log.info("reload of %s: the %d workers reload it", config.path, self.slots)
        return {"reloaded": config.path, "workers": self.slots}

    async def _replace_workers(self, config: Config, keys: set[str]) -> dict[str, Any]:
        """Listeners added or removed: sockets for the new ones first (one that cannot be
        opened refuses the reload), then a new worker in every slot on the new set of sockets,
        and the old ones stop gracefully (they finish their requests; their idle keep-alive
        clients reconnect to the new ones). Unchanged listeners' sockets are never closed."""
        try:
            added = open_slots(config, self.slots, only=keys - set(self.sockets))
        except OSError as exc:
            self.reloads_refused += 1
            msg = f"reload refused: cannot listen: {exc.strerror.lower() if exc.strerror else exc}"
            log.error("%s", msg)
            raise AdminError(msg) from None
        removed = {k: self.sockets.pop(k) for k in set(self.sockets) - keys}
        self.sockets.update(added)
        self.config = config
        await self.stop_checks()
        old = list(self.procs)
        self.generation += 1
        for slot in range(self.slots):
            self.spawn(slot)  # (self.procs[slot] is the new one: the supervisor watches it)
        for proc in old:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                self.retired.append(proc)
        for group in removed.values():
            for s in group:
                s.close()
        self.start_checks()
        self.reloads += 1
        self.loaded_at = time.time()
        log.info("reload of %s: listeners changed (opened %s, closed %s); new workers started, the old "
                 "ones finish their requests", config.path, ", ".join(sorted(added)) or "none",
                 ", ".join(sorted(removed)) or "none")
        return {"reloaded": config.path, "workers": self.slots, "opened": sorted(added), "closed": sorted(removed)}

    # ---- admin (runtime/admin.Commands) -----------------------------------------------------------
    async def run(self, args: list[str]) -> Any:
        if args[:2] == ["show", "info"]:
            return {"version": __import__("l7switch").__version__, "pid": os.getpid(),
                    "uptime_s": round(time.time() - self.started, 1), "workers": self.slots,
                    "worker_pids": [p.pid if p is not None else None for p in self.procs],
                    "worker_restarts": self.restarts, "config": self.config.path,
                    "loaded_at": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(self.loaded_at)),
                    "reloads": self.reloads, "reloads_refused": self.reloads_refused}
        if args[:1] == ["reload"]:
            return await self.reload()
        if args[:1] == ["check"]:
            return await check_file(self.config.path)
        replies = await asyncio.gather(*(self._ask(slot, args) for slot in range(self.slots)))
        errors = [r.get("error") for r in replies if not r.get("ok")]
        if errors:
            raise AdminError(str(errors[0]))
        if args == ["internal", "stats"]:
            # Counters add up (stats.merge); what describes the switch is the master's.
            merged = merge_stats([r.get("result") for r in replies])
            merged.update(uptime_s=round(time.time() - self.started, 1), workers=self.slots,
                          loaded_at=time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(self.loaded_at)))
            return merged
        return merge([r.get("result") for r in replies])

    async def _ask(self, slot: int, args: list[str]) -> dict[str, Any]:
        try:
            reader, writer = await asyncio.open_unix_connection(self.worker_socket(slot))
        except OSError as exc:
            return {"ok": False, "error": f"worker {slot} does not answer ({exc.strerror or exc})"}
        try:
            writer.write(json.dumps({"args": args}).encode() + b"\n")
            line = await asyncio.wait_for(reader.readline(), 30)
            reply: dict[str, Any] = json.loads(line)
            return reply
        except (OSError, ValueError, asyncio.TimeoutError) as exc:
            return {"ok": False, "error": f"worker {slot}: {exc!r}"}
        finally:
            writer.close()


SUMMED = ("inflight", "queued", "total", "failures", "retries", "clients", "requests", "available",
          "cleared", "redispatches", "conns", "idle_conns")


def merge(results: list[Any]) -> Any:
    """The workers' answers to one command as one switch's: rows with the same identity (pool,
    server, key) have their counters summed; anything else is the first worker's."""
    first = results[0]
    if isinstance(first, list) and first and isinstance(first[0], dict):
        ident = [k for k in ("pool", "server", "key") if k in first[0]]
        rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        for result in results:
            for row in result:
                key = tuple(row.get(k) for k in ident) if ident else (len(rows),)
                if key not in rows:
                    rows[key] = dict(row)
                    continue
                merged = rows[key]
                for k in SUMMED:
                    if isinstance(row.get(k), int) and isinstance(merged.get(k), int):
                        merged[k] += row[k]
                if isinstance(row.get("latency_ms"), (int, float)) and row.get("total"):
                    merged["latency_ms"] = max(merged.get("latency_ms") or 0, row["latency_ms"])
        return list(rows.values())
    if isinstance(first, dict):
        out = dict(first)
        for result in results[1:]:
            for k in SUMMED:
                if isinstance(result.get(k), int) and isinstance(out.get(k), int):
                    out[k] += result[k]
        return out
    if isinstance(first, list) and all(isinstance(x, str) for x in first):
        return [f"worker {i}: {line}" for i, r in enumerate(results) for line in r]
    return first


def resolve_workers(value: int) -> int:
    """``workers: auto`` (0) is the CPU count, as nginx's ``worker_processes auto``."""
    return value if value > 0 else (os.cpu_count() or 1)


def run_master(config: Config, slots: int, log_level: str = "info") -> int:
    import uvloop

    from .admin import AdminServer
    from .switch import raise_fd_limit

    logging.basicConfig(level=getattr(logging, log_level.upper()), format="%(asctime)s %(levelname)s %(message)s")
    raise_fd_limit()
    master = Master(config, slots, log_level)
    try:
        master.sockets = open_slots(config, slots)
    except OSError as exc:
        log.error("cannot listen: %s", exc.strerror.lower() if exc.strerror else exc)
        return 1

    async def main() -> int:
        loop = asyncio.get_running_loop()
        spec = config.admin
        master.admin_path = spec.socket if spec.socket is not None else default_socket()
        server = None
        if master.admin_path:
            server = AdminServer(master, master.admin_path, spec.mode)
            try:
                await server.start()
            except OSError as exc:
                log.warning("no admin socket %s: %s", master.admin_path, exc.strerror or exc)
                master.admin_path, server = "", None
        if (config.monitor is not None or config.metrics is not None) and not master.admin_path:
            log.warning("the monitor and /metrics read the workers through their admin sockets: "
                        "with admin: off they show nothing")
        try:
            await master.observers.start(config)
        except OSError as exc:
            log.error("cannot open the monitor or metrics listener: %s", exc.strerror or exc)
            await master.observers.stop()
            if server is not None:
                await server.stop()
            return 1
        for slot in range(slots):
            master.spawn(slot)
        master.start_checks()
        addresses = [g[0].getsockname()[:2] for g in master.sockets.values()]
        for host, port in addresses:
            log.info("l7switch %s listening on %s:%d with %d workers (%s)", build(), host, port, slots, config.path)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_reload_quietly(master)))
        loop.add_signal_handler(signal.SIGUSR1, lambda: master.signal_workers(signal.SIGUSR1))
        supervisor = loop.create_task(master.supervise())
        await stop.wait()
        log.info("stopping: the workers finish their requests")
        await master.observers.stop()
        await master.stop_checks()
        await master.stop()
        supervisor.cancel()
        if server is not None:
            await server.stop()
        return 0

    try:
        return uvloop.run(main())
    finally:
        for group in master.sockets.values():
            for s in group:
                s.close()


async def _reload_quietly(master: Master) -> None:
    try:
        await master.reload()
    except AdminError:
        pass  # (logged)


def worker_main(slot: int, fds: dict[str, int], path: str, admin: str, log_level: str,
                peers: int = 1) -> int:
    """A worker: the switch on its slot's inherited sockets; stops when the master goes."""
    import dataclasses

    from .switch import run

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # the master gone: stop (no orphans serving)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:
        return 0  # the master died before we could ask to be told
    try:
        config = load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    config = dataclasses.replace(config, admin=dataclasses.replace(config.admin, socket=admin))
    inherited = {key: [socket.socket(fileno=fd)] for key, fd in fds.items()}
    return run(config, log_level, inherited=inherited, worker=slot, peers=peers)

