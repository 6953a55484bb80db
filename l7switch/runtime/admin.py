"""The runtime admin: the operations ``l7switch ctl`` (and, later, the monitor) performs on a
running switch, and the Unix socket they arrive on.

Operations take words and return values (a dict for ``--json``, rendered as tables by the
client); a mistake raises ``AdminError`` with a did-you-mean. Changes go through the pools'
own methods (ServerPool.set_admin / set_weight), so they log their one transition line like any
other, and a reload keeps them unless the file changed that server (ServerPool.inherit).

The socket (``admin.socket``, owner-only by default; HAProxy's "stats socket ... level admin")
speaks one JSON line each way: the client sends ``{"args": ["show", "servers"]}``, the switch
answers ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}`` and closes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import socket
import stat
import time
import types
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..balance.health import AgentReply, CheckResult
from ..balance.pool import ServerPool
from ..checks.checker import pool_deliver
from ..balance.servers import DRAIN, MAINT, READY, Server
from ..config import load_config
from ..errors import AdminError, ConfigError
from ..config.yamlnodes import parse_address
from ..guard.clients import describe
from ..spec import Config, ServerSpec
from ..version import __version__, build

log = logging.getLogger("l7switch")

MAX_REQUEST = 64 * 1024  # one command line; anything longer is not a command
CLIENT_TIMEOUT = 10.0  # seconds a ctl connection may take to send its command


def default_socket() -> str:
    """Where ``run`` puts the admin socket and ``ctl`` looks for it when the file names none:
    /run/l7switch.sock as root, else $XDG_RUNTIME_DIR/l7switch.sock, else /tmp/l7switch-UID.sock."""
    if os.geteuid() == 0 and os.path.isdir("/run"):
        return "/run/l7switch.sock"
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.path.isdir(runtime_dir):
        return os.path.join(runtime_dir, "l7switch.sock")
    return f"/tmp/l7switch-{os.geteuid()}.sock"


def _mean(word: str, choices: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(choices)})" if choices else ""


class Admin:
    """The operations, on a switch's live state (runtime/switch.Switch)."""

    def __init__(self, switch: Any) -> None:
        self.switch = switch
        self.started = time.time()
        self.commands: dict[str, Callable[[list[str]], Awaitable[Any]]] = {
            "show pools": self.show_pools, "show servers": self.show_servers, "show info": self.show_info,
            "show persistence": self.show_persistence, "clear persistence": self.clear_persistence,
            "set weight": self.set_weight, "drain": self.drain, "disable": self.disable,
            "enable": self.enable, "reload": self.reload, "check": self.check,
            "show client": self.show_client, "add server": self.add_server,
            "remove server": self.remove_server, "internal checks": self.internal_checks,
            "internal stats": self.internal_stats,
        }
        #: Servers added and removed at run time, by (pool, name): laid over every configuration
        #: read from the file (a reload keeps them), unless the file changed that server.
        self.added: dict[tuple[str, str], ServerSpec] = {}
        self.removed: dict[tuple[str, str], ServerSpec | None] = {}  # the file's spec when removed
        self._removals: set[asyncio.Task[None]] = set()

    async def run(self, args: list[str]) -> Any:
        if not args:
            raise AdminError(f"no command; commands: {', '.join(self.commands)}")
        for n in (2, 1):
            name = " ".join(args[:n])
            if name in self.commands:
                return await self.commands[name](args[n:])
        raise AdminError(f"unknown command {' '.join(args[:2])!r}{_mean(' '.join(args[:2]), list(self.commands))}")

    # ---- lookups ------------------------------------------------------------------------------------
    def _pools(self) -> dict[str, ServerPool]:
        pools: dict[str, ServerPool] = self.switch.state.current.pools
        return pools

    def _pool(self, name: str) -> ServerPool:
        pools = self._pools()
        if name not in pools:
            raise AdminError(f"unknown pool {name!r}{_mean(name, sorted(pools))}")
        return pools[name]

    def _server(self, target: list[str]) -> tuple[ServerPool, Server]:
        if len(target) < 1 or "/" not in target[0]:
            raise AdminError("expected POOL/SERVER, e.g. web/web1")
        pool_name, _, server_name = target[0].partition("/")
        pool = self._pool(pool_name)
        servers = {s.name: s for s in pool.all_servers}
        if server_name not in servers:
            raise AdminError(f"unknown server {server_name!r} in pool {pool_name!r}{_mean(server_name, sorted(servers))}")
        return pool, servers[server_name]

    # ---- show ---------------------------------------------------------------------------------------
    async def show_pools(self, args: list[str]) -> list[dict[str, Any]]:
        rows = []
        for name, pool in self._pools().items():
            persist = pool.persistence or pool.hello_persistence
            rows.append({"pool": name, "scheduler": pool.scheduler.label(),
                         "persistence": persist.snapshot().get("method") if persist is not None else None,
                         "servers": len(pool.servers), "backups": len(pool.backups),
                         "available": sum(1 for s in pool.servers if s.available),
                         "inflight": sum(s.inflight for s in pool.all_servers), "queued": pool.queue.count,
                         "total": sum(s.total for s in pool.all_servers), "retries": pool.retries})
        return rows

    async def show_servers(self, args: list[str]) -> list[dict[str, Any]]:
        pools = [self._pool(args[0])] if args else list(self._pools().values())
        rows = []
        for pool in pools:
            snap = pool.snapshot()
            for s in snap["servers"]:
                check = s.get("check") or {}
                rows.append({"pool": pool.name, "server": s["name"], "address": s["address"],
                             "state": s["state"], "weight": s["weight"], "effective_weight": s["effective_weight"],
                             "inflight": s["inflight"], "queued": s["queued"], "total": s["total"],
                             "failures": s["failures"], "retries": s["retries"], "latency_ms": s["latency_ms"],
                             "backup": s["backup"], "last_check": check.get("last")})
        return rows

    async def show_info(self, args: list[str]) -> dict[str, Any]:
        sw = self.switch
        reloader = sw.reloader
        loaded = reloader.loaded_at if reloader is not None else self.started
        return {"version": __version__, "build": build(), "pid": os.getpid(), "uptime_s": round(time.time() - self.started, 1),
                "workers": 1, "config": sw.config.path,
                "loaded_at": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(loaded)),
                "reloads": reloader.count if reloader is not None else 0,
                "reloads_refused": reloader.failed if reloader is not None else 0,
                "listeners": [f"{h}:{p}" for h, p in sw.addresses], "clients": len(sw.state.clients),
                "requests": sw.state.requests}

    async def internal_stats(self, args: list[str]) -> dict[str, Any]:
        """What the monitor and /metrics show, in a shape ``stats.merge`` adds up across workers:
        per pool its servers by name (state, weights, check, in-flight, traffic counters) and
        per listener its counters."""
        sw = self.switch
        info = await self.show_info([])
        pools: dict[str, Any] = {}
        for name, pool in self._pools().items():
            snap = pool.snapshot()
            sched = snap["scheduler"]
            persist = snap["persistence"]
            servers: dict[str, Any] = {}
            for s in snap["servers"]:
                check = s.pop("check")
                last = check.get("last") if check is not None else None
                s["check"] = None if check is None else {
                    "healthy": check["healthy"], "ok": last["ok"] if last else None,
                    "detail": last["detail"] if last else "not checked yet", "ms": last["ms"] if last else None}
                s.pop("agent", None)
                servers[s.pop("name")] = s
            pools[name] = {
                "scheduler": pool.scheduler.label(), "persistence": persist.get("method") if persist else None,
                "persistence_entries": persist.get("entries", 0) if persist else 0,
                "keys": sched.get("keys"), "queued": pool.queue.count, "retries": pool.retries,
                "unserved": pool.unserved.snapshot(), "servers": servers,
            }
        return {"version": __version__, "uptime_s": info["uptime_s"], "workers": 1,
                "config": info["config"], "loaded_at": info["loaded_at"], "clients": len(sw.state.clients),
                "listeners": {addr: t.snapshot() for addr, t in sw.state.listeners.items()},
                "pools": pools}

    async def show_client(self, args: list[str]) -> list[str]:
        """What the per-client limits say about one client address now (explain --client --live)."""
        if len(args) != 1:
            raise AdminError("expected: show client ADDRESS")
        state = self.switch.state
        return describe(state.guard, self.switch.config.limits.per_client, args[0])

    def _table(self, pool: ServerPool) -> Any:
        persist = pool.persistence or pool.hello_persistence
        table = getattr(persist, "table", None)
        if table is None:
            raise AdminError(f"pool {pool.name!r} keeps no persistence table "
                             f"({'no persistence' if persist is None else 'cookies are kept by the clients'})")
        return table

    async def show_persistence(self, args: list[str]) -> list[dict[str, Any]]:
        if not args:
            raise AdminError("expected: show persistence POOL [--limit N]")
        limit = 100
        if len(args) >= 3 and args[1] == "--limit":
            try:
                limit = int(args[2])
            except ValueError:
                raise AdminError(f"--limit: expected a number, found {args[2]!r}") from None
        table = self._table(self._pool(args[0]))
        items = table.items() if hasattr(table, "items") else []
        return [{"key": k, "server": v, "expires_in_s": round(left, 1)} for k, v, left in items[:limit]]

    async def clear_persistence(self, args: list[str]) -> dict[str, Any]:
        if not args:
            raise AdminError("expected: clear persistence POOL [KEY]")
        table = self._table(self._pool(args[0]))
        if len(args) > 1:
            table.delete(args[1])
            return {"cleared": 1}
        keys = [k for k, _, _ in table.items()] if hasattr(table, "items") else []
        for key in keys:
            table.delete(key)
        return {"cleared": len(keys)}

    # ---- change -------------------------------------------------------------------------------------
    async def set_weight(self, args: list[str]) -> dict[str, Any]:
        if len(args) != 2:
            raise AdminError("expected: set weight POOL/SERVER N|N%")
        pool, server = self._server(args[:1])
        value = args[1]
        try:
            if value.endswith("%"):
                spec = next(s for s in (*pool.spec.servers, *pool.spec.backup) if s.name == server.name)
                weight = round(spec.weight * int(value[:-1]) / 100)
            else:
                weight = int(value)
        except (ValueError, StopIteration):
            raise AdminError(f"weight: expected a number or a percentage of the configured weight, found {value!r}") from None
        if not 0 <= weight <= 1_000_000:
            raise AdminError(f"weight: expected 0..1000000, found {weight}")
        pool.set_weight(server, weight)
        return {"server": f"{pool.name}/{server.name}", "weight": server.base_weight,
                "effective_weight": server.weight}

    async def _admin(self, args: list[str], state: str, why: str) -> dict[str, Any]:
        if len(args) != 1:
            raise AdminError("expected POOL/SERVER, e.g. web/web1")
        pool, server = self._server(args)
        pool.set_admin(server, state, why)
        return {"server": f"{pool.name}/{server.name}", "state": server.state}

    async def drain(self, args: list[str]) -> dict[str, Any]:
        return await self._admin(args, DRAIN, "drained by ctl")

    async def disable(self, args: list[str]) -> dict[str, Any]:
        return await self._admin(args, MAINT, "disabled by ctl")

    async def enable(self, args: list[str]) -> dict[str, Any]:
        return await self._admin(args, READY, "enabled by ctl")

    async def internal_checks(self, args: list[str]) -> dict[str, int]:
        """A worker's side of the master's health checks (runtime/workers.py): its batch of
        probe results, counted into this worker's pools as if probed here."""
        if len(args) != 1:
            raise AdminError("expected: internal checks JSON")
        deliver = pool_deliver(lambda: self.switch.state.current.pools)
        n = 0
        for pool, server, kind, reply, result in json.loads(args[0]):
            deliver(pool, server, kind, AgentReply(**reply) if reply is not None else None, CheckResult(**result))
            n += 1
        return {"delivered": n}

    # ---- servers added and removed at run time ------------------------------------------------------
    def overlay(self, config: Config) -> Config:
        """``config`` (as read from the file) with the servers added and removed at run time. The
        file wins for a server it now says something new about: an added name it defines, a
        removed server whose lines changed."""
        pools = dict(config.pools)
        for key, spec in list(self.removed.items()):
            pool = pools.get(key[0])
            now = next((s for s in pool.servers if s.name == key[1]), None) if pool is not None else None
            if now is not None and spec is not None and now != spec:
                del self.removed[key]  # the file changed it: the file wins
        for key in list(self.added):
            pool = pools.get(key[0])
            if pool is None or any(s.name == key[1] for s in (*pool.servers, *pool.backup)):
                del self.added[key]  # its pool is gone, or the file now names it
        for name, pool in pools.items():
            servers = [s for s in pool.servers if (name, s.name) not in self.removed]
            servers += [spec for (p, _), spec in self.added.items() if p == name and (p, spec.name) not in self.removed]
            if len(servers) != len(pool.servers) or any(a is not b for a, b in zip(servers, pool.servers)):
                pools[name] = dataclasses.replace(pool, servers=tuple(servers))
        return dataclasses.replace(config, pools=types.MappingProxyType(pools))

    async def add_server(self, args: list[str]) -> dict[str, Any]:
        """add server POOL NAME ADDRESS [--weight N]: in service at once (with the pool's checks,
        as its first server has them); kept across reloads until the file names it."""
        weight = 1
        if len(args) == 5 and args[3] == "--weight":
            try:
                weight = int(args[4])
            except ValueError:
                raise AdminError(f"--weight: expected a number, found {args[4]!r}") from None
            args = args[:3]
        if len(args) != 3:
            raise AdminError("expected: add server POOL NAME ADDRESS [--weight N]")
        pool_name, name, address = args
        pool = self._pool(pool_name)
        if not name or any(c in name for c in "/ \t") or any(s.name == name for s in pool.all_servers):
            raise AdminError(f"server name {name!r}: taken in pool {pool_name!r}, or not a plain name")
        try:
            host, port = parse_address(address)
        except ValueError as exc:
            raise AdminError(f"address: {exc}") from None
        if any((s.host, s.port) == (host, port) for s in pool.all_servers):
            raise AdminError(f"{address} is already a server of pool {pool_name!r}")
        template = pool.spec.servers[0] if pool.spec.servers else None
        spec = ServerSpec(name, host, port, weight,
                          health=template.health if template else None,
                          agent=template.agent if template else None,
                          maxconn=template.maxconn if template else 0)
        self.added[(pool_name, name)] = spec
        self.removed.pop((pool_name, name), None)
        await self._apply()
        return {"server": f"{pool_name}/{name}", "address": spec.address, "weight": weight}

    async def remove_server(self, args: list[str]) -> dict[str, Any]:
        """remove server POOL/SERVER: drained now (no new requests; sticky clients move), removed
        once its requests in flight are done (at most hard_stop_after)."""
        pool, server = self._server(args)
        if len([s for s in pool.servers if s is not server]) == 0 and not server.backup:
            raise AdminError(f"{server.name} is the last server of pool {pool.name!r}")
        key = (pool.name, server.name)
        file_spec = next((s for s in pool.spec.servers if s.name == server.name), None)
        pool.set_admin(server, DRAIN, "to be removed by ctl")
        task = asyncio.get_running_loop().create_task(self._remove_when_idle(key, server, file_spec))
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)
        return {"server": f"{pool.name}/{server.name}", "state": server.state,
                "removal": "now" if not server.inflight else f"after its {server.inflight} requests in flight"}

    async def _remove_when_idle(self, key: tuple[str, str], server: Server, file_spec: ServerSpec | None) -> None:
        deadline = time.monotonic() + self.switch.config.hard_stop_after
        while server.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if key in self.added:
            del self.added[key]
        else:
            self.removed[key] = file_spec
        await self._apply()
        log.info("server %s/%s removed (ctl)", *key)

    async def _apply(self) -> None:
        await self.switch.apply(self.switch.file_config)

    # ---- the file -----------------------------------------------------------------------------------
    async def reload(self, args: list[str]) -> dict[str, Any]:
        reloader = self.switch.reloader
        if reloader is None:
            raise AdminError("this switch was not started from a file: nothing to reload")
        result = await reloader.reload()
        if not result.ok:
            raise AdminError("reload refused; still serving the previous configuration:\n" + "\n".join(result.errors))
        return {"reloaded": reloader.path, "ms": round(result.seconds * 1000, 1), **result.changes}

    async def check(self, args: list[str]) -> dict[str, Any]:
        return await check_file(self.switch.config.path)


async def check_file(path: str) -> dict[str, Any]:
    """``ctl check``: the file on disk read and checked (in a thread), not applied."""
    try:
        await asyncio.to_thread(load_config, path)
    except ConfigError as exc:
        raise AdminError("\n".join(str(i) for i in exc.issues)) from None
    return {"file": path, "ok": True}


class Commands(Protocol):
    """What answers the admin socket: ``Admin`` in a switch, the master with workers."""

    async def run(self, args: list[str]) -> Any: ...


class AdminServer:
    """The Unix socket of ``admin.socket``: one command per connection."""

    def __init__(self, admin: Commands, path: str, mode: int) -> None:
        self.admin = admin
        self.path = path
        self.mode = mode
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Bind the socket; raises OSError with a message an operator can act on when another
        switch is using it. A stale socket file (nobody listening) is replaced."""
        if os.path.exists(self.path):
            if not stat.S_ISSOCK(os.stat(self.path).st_mode):
                raise OSError("exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(self.path)
            except OSError:
                os.unlink(self.path)  # stale: left by a switch that is gone
            else:
                raise OSError("another l7switch is using it")
            finally:
                probe.close()
        old_umask = os.umask(0o177)  # never a moment with wider permissions than asked for
        try:
            self.server = await asyncio.start_unix_server(self._serve, self.path, limit=MAX_REQUEST)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, self.mode)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), CLIENT_TIMEOUT)
                request = json.loads(line)
                args = request["args"]
                if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                    raise ValueError
            except (ValueError, KeyError, TypeError, asyncio.LimitOverrunError):
                reply = {"ok": False, "error": 'expected one JSON line: {"args": ["show", "servers"]}'}
            except asyncio.TimeoutError:
                return
            else:
                try:
                    reply = {"ok": True, "result": await self.admin.run(args)}
                    if args[:1] not in (["show"], ["internal"]):
                        log.info("ctl: %s", " ".join(args))
                except AdminError as exc:
                    reply = {"ok": False, "error": str(exc)}
                except Exception as exc:  # a bug must not take the admin socket down
                    log.exception("ctl %s failed", args)
                    reply = {"ok": False, "error": f"internal error: {exc!r}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
            try:
                os.unlink(self.path)
            except OSError:
                pass
