"""``l7switch demo``: a switch and the small origin servers of its pools, in one process.

The pools of ``rules/demo.yaml`` decide what runs: every server of a pool named like "html"
serves pages, "images" serves pictures, "cgi" serves dynamic scripts and a form, "app" a log-in
application, "files" large downloads (the last three are in demoapps.py). Each origin is an
``OriginServer`` (origin.py), so the standard test routes (``/echo``, ``/bytes/N`` ...) work on
all of them too, which is handy when poking at the switch by hand.

Tests use ``start_demo(path, ephemeral=True)``: every origin and the switch bind port 0 and the
configuration is rewritten to the ports actually bound, so tests never collide with a running
demo or with each other.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import html
import logging
import os
import secrets
import signal
import struct
import tempfile
import time
import types
import zlib
from pathlib import Path
from typing import Any

from ..config import load_config
from ..errors import ConfigError
from ..config.users import set_user
from ..spec import Config, MetricsSpec, MonitorSpec, PoolSpec
from .demoapps import app_handler, files_handler, form_script
from .origin import Handler, OriginRequest, OriginResponse, OriginServer, standard_handler

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "rules" / "demo.yaml"
DEMO_MONITOR_PORT, DEMO_METRICS_PORT = 9443, 9100  # HAProxy stats pages often sit on 8404/9443

log = logging.getLogger("l7switch.demo")


# ---- tiny images, made in code so the package ships no binary files ----------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    # PNG chunk: length, type, data, CRC-32 over type+data (PNG spec §5.3).
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_png(size: int = 32) -> bytes:
    """A valid RGBA PNG: a blue-to-teal square with a white diagonal and border (a "logo")."""
    rows = []
    for y in range(size):
        row = bytearray([0])  # filter type 0 (None) for every scanline
        for x in range(size):
            if x in (0, size - 1) or y in (0, size - 1) or abs(x - y) <= 1:
                row += b"\xff\xff\xff\xff"
            else:
                row += bytes((30, 80 + 120 * x // size, 200 - 60 * y // size, 255))
        rows.append(bytes(row))
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)  # 8-bit RGBA, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + _png_chunk(b"IEND", b""))


def make_ico(png: bytes, size: int = 32) -> bytes:
    # An ICO may hold a whole PNG as its one image (supported since Windows Vista, all browsers).
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", size, size, 0, 0, 1, 32,
                                                      len(png), 22) + png


# The classic 1x1 transparent GIF (43 bytes): LZW codes clear, 0, end packed as 0x44 0x01.
GIF_1X1 = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00"
           b"!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")

SVG_LOGO = (b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64" viewBox="0 0 64 64">'
            b'<rect width="64" height="64" rx="8" fill="#1e64c8"/><text x="32" y="42" font-size="28"'
            b' text-anchor="middle" fill="#fff" font-family="sans-serif">L7</text></svg>\n')

LOGO_PNG = make_png()
IMAGES: dict[str, tuple[str, bytes]] = {  # extension -> (content type, body)
    "png": ("image/png", LOGO_PNG),
    "gif": ("image/gif", GIF_1X1),
    "svg": ("image/svg+xml", SVG_LOGO),
    "ico": ("image/x-icon", make_ico(LOGO_PNG)),
}


# ---- the static kinds of demo origin (the dynamic ones are in demoapps.py) --------------

# The gallery's pictures: a page that pulls several images, as most real pages do, so a load
# test that follows a page's <img> tags spreads its requests over the images pool.
GALLERY = ("/images/logo.png", "/images/photo-1.png", "/images/photo-2.png", "/images/photo-3.png",
           "/images/dot.gif", "/images/logo.svg")


def html_handler(name: str) -> Handler:
    fallback = standard_handler(name)
    hits = [0]

    def handler(req: OriginRequest) -> Any:
        if req.path not in ("/", "/index.html", "/gallery.html"):
            return fallback(req)
        hits[0] += 1
        who = html.escape(name)
        if req.path == "/gallery.html":
            imgs = "\n".join(f'<img src="{src}" alt="" width="64" height="64">' for src in GALLERY)
            page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>gallery — {who}</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 2em auto">
<h1>Gallery</h1>
<p>This page came from <b>{who}</b>; its {len(GALLERY)} pictures from the <b>images</b> pool.</p>
{imgs}
<p><a href="/">home</a></p>
</body></html>
"""
        else:
            page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>l7switch demo — {who}</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 2em auto">
<h1><img src="/images/logo.png" alt="logo" width="32" height="32"> Hello from {who}</h1>
<p>This page came from the <b>html</b> pool, server <b>{who}</b> (page view #{hits[0]} here).
Reload: the round-robin scheduler sends the next request to the other html server.</p>
<p>The logo above came from the <b>images</b> pool; <a href="/cgi-bin/hello?name=you">/cgi-bin/hello</a>
is answered by the <b>cgi</b> pool. Every response names its server in <code>X-Server</code>.</p>
<ul>
<li><a href="/gallery.html">a gallery</a>: one page, {len(GALLERY)} images</li>
<li><a href="/cgi-bin/form">a form</a> (cgi pool)</li>
<li><a href="/app/">log in</a> (app pool: the SRVID cookie keeps you on one server)</li>
<li><a href="/files/">downloads</a> of 1&ndash;4 MiB (files pool)</li>
</ul>
</body></html>
"""
        return OriginResponse(200, [("Content-Type", "text/html; charset=utf-8")], page.encode())

    return handler


def image_handler(name: str) -> Handler:
    fallback = standard_handler(name)

    def handler(req: OriginRequest) -> Any:
        path = req.path
        last = path.rpartition("/")[2]
        ext = last.rpartition(".")[2].lower() if "." in last else ""
        found = IMAGES.get(ext)
        if found is not None:
            ctype, body = found
            return OriginResponse(200, [("Content-Type", ctype),
                                        ("Cache-Control", "public, max-age=60")], body)
        if path.startswith("/images/"):
            return OriginResponse(404, [("Content-Type", "text/plain; charset=utf-8")],
                                  f"{name}: no such image {path} (try .png, .gif, .svg, .ico)\n".encode())
        return fallback(req)

    return handler


def cgi_handler(name: str) -> Handler:
    fallback = standard_handler(name)
    counter = [0]

    def handler(req: OriginRequest) -> Any:
        if req.path == "/cgi-bin/form":
            return form_script(name, req)
        if req.path != "/cgi-bin/hello":
            if req.path.startswith("/cgi-bin/"):
                return OriginResponse(404, [("Content-Type", "text/plain; charset=utf-8")],
                                      f"{name}: no such script {req.path}\n".encode())
            return fallback(req)
        counter[0] += 1
        text = (f"Hello from {name}!\n"
                f"time:    {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n"
                f"request: #{counter[0]} on this server\n"
                f"method:  {req.method}\n"
                f"query:   {req.query or '(none)'}\n"
                f"client:  {req.client[0]}:{req.client[1]} (the switch's side of the connection)\n")
        # Dynamic output: tell caches not to keep it.
        return OriginResponse(200, [("Content-Type", "text/plain; charset=utf-8"),
                                    ("Cache-Control", "no-store")], text.encode())

    return handler


def handler_for(pool: str, name: str) -> Handler:
    """Which kind of origin serves a pool, judged from the pool's name."""
    lowered = pool.lower()
    if "image" in lowered or "img" in lowered:
        return image_handler(name)
    if "cgi" in lowered:
        return cgi_handler(name)
    if "app" in lowered:
        return app_handler(name)
    if "file" in lowered or "download" in lowered:
        return files_handler(name)
    return html_handler(name)


# ---- putting it together ----------------------------------------------------------------

class Demo:
    """The running demo: ``.port`` is the switch's port; ``await stop()`` ends everything."""

    def __init__(self, switch: Any, origins: list[OriginServer], config: Config,
                 monitor_password: str = "") -> None:
        self.switch = switch
        self.origins = origins
        self.config = config
        self.monitor_password = monitor_password  # of the user "demo", when the demo made one
        self.addresses: list[tuple[str, int]] = list(switch.addresses)
        self.port: int = self.addresses[0][1]

    async def stop(self) -> None:
        try:
            await self.switch.stop(grace=2.0)
        finally:
            await asyncio.gather(*(o.stop() for o in self.origins), return_exceptions=True)


def with_monitor(config: Config, ephemeral: bool) -> tuple[Config, str]:
    """The demo's monitor and /metrics when the file has none: plain HTTP on loopback (a demo;
    README shows the TLS setup), one admin user "demo" with a random password in a users file
    of a temporary directory. Returns the config and that password."""
    if config.monitor is not None:
        return config, ""
    password = secrets.token_urlsafe(9)
    users = os.path.join(tempfile.mkdtemp(prefix="l7switch-demo-"), "users")
    set_user(users, "demo", "admin", password)
    monitor = MonitorSpec("127.0.0.1", 0 if ephemeral else DEMO_MONITOR_PORT, users, insecure=True)
    metrics = config.metrics or MetricsSpec("127.0.0.1", 0 if ephemeral else DEMO_METRICS_PORT)
    return dataclasses.replace(config, monitor=monitor, metrics=metrics), password


async def start_demo(config_path: str | Path = DEMO_CONFIG, *, ephemeral: bool = False,
                     port: int | None = None, monitor: bool = False) -> Demo:
    """Start every origin of the config's pools, then the switch.

    ``ephemeral``: all sockets bind port 0 and the config is rewritten to the real ports.
    ``port``: the switch's listener port (ignored when ephemeral). ``monitor``: add the
    monitor and /metrics (``with_monitor``). Raises ConfigError for a bad file and OSError when
    an address is taken; nothing is left running in either case.
    """
    from ..runtime.switch import Switch  # late: keeps `import l7switch.devtools.demo` cheap for the CLI

    config = load_config(config_path)
    origins: list[OriginServer] = []
    try:
        pools: dict[str, PoolSpec] = {}
        for pname, pool in config.pools.items():
            servers = []
            for spec in pool.servers:
                origin = OriginServer(handler_for(pname, spec.name), spec.name)
                origins.append(origin)
                bound = await origin.start(spec.host, 0 if ephemeral else spec.port)
                servers.append(dataclasses.replace(spec, port=bound))
            pools[pname] = dataclasses.replace(pool, servers=tuple(servers))
        # Config objects are frozen; a rewritten copy is a new Config, exactly as a reload is.
        listeners = config.listeners
        if ephemeral:
            listeners = tuple(dataclasses.replace(lst, port=0) for lst in listeners)
        elif port is not None:
            listeners = tuple(dataclasses.replace(lst, port=port) for lst in listeners)
        config = dataclasses.replace(config, listeners=listeners,
                                     pools=types.MappingProxyType(pools))
        password = ""
        if monitor:
            config, password = with_monitor(config, ephemeral)
        switch = Switch(config)
        await switch.start()
    except BaseException:
        await asyncio.gather(*(o.stop() for o in origins), return_exceptions=True)
        raise
    return Demo(switch, origins, config, password)


def banner(demo: Demo) -> str:
    host, port = demo.addresses[0]
    base = f"http://{host}:{port}"
    rules = os.path.relpath(demo.config.path)  # as the user would type it from here
    if rules.startswith(".."):
        rules = demo.config.path
    lines = [
        "",
        f"l7switch demo is up: the switch listens on {base}  (rules: {rules})",
        "",
        "  real servers:",
    ]
    for pname, pool in demo.config.pools.items():
        for s in pool.servers:
            where = f"{s.host}:{s.port}"
            lines.append(f"    {pname:<7} {s.name:<8} {where:<16} ({pool.scheduler}, weight {s.weight})")
    lines += [
        "",
        "  try (watch the X-Server header change between servers):",
        f"    curl -i {base}/                       # a page from the html pool",
        f"    curl -sI {base}/images/logo.png       # a PNG from the images pool",
        f"    curl '{base}/cgi-bin/hello?name=you'  # dynamic text from the cgi pool",
        f"    curl -d name=you -d message=hi {base}/cgi-bin/form   # a form post, echoed",
        f"    curl -c jar -d user=you {base}/app/login; curl -b jar {base}/app/account",
        "                                          # a session kept on one app server",
        f"    curl -o /dev/null {base}/files/4MiB.bin   # a large download from the files pool",
        f"    open {base}/ in a browser",
        "",
        "  and ask the switch why a URL goes where it goes:",
        f"    l7switch explain {rules} {base}/images/logo.png",
        "",
    ]
    obs = demo.switch.observers
    if obs.monitor is not None:
        who = (f"user demo, password {demo.monitor_password}" if demo.monitor_password
               else f"users in {obs.monitor.spec.users}")
        lines += [f"  the monitor: http://127.0.0.1:{obs.monitor.port}/  ({who})"]
    if obs.metrics is not None:
        lines += [f"  Prometheus metrics: http://127.0.0.1:{obs.metrics.port}/metrics"]
    lines += [
        "",
        "  Ctrl-C to stop.",
        "",
    ]
    return "\n".join(lines)


async def _serve(config_path: Path, port: int | None) -> int:
    try:
        demo = await start_demo(config_path, port=port, monitor=True)
    except ConfigError as e:
        for issue in e.issues:
            print(issue)
        return 1
    except OSError as e:
        origins = sorted(s.port for p in load_config(config_path).pools.values() for s in p.servers)
        print(f"l7switch demo: cannot start: {e.strerror or e}\n"
              f"  Is another demo (or something else) using ports {origins[0]}-{origins[-1]} or "
              f"{port}? Try `l7switch demo --port 8081` if only the switch port is taken.")
        return 1
    print(banner(demo), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("\nstopping: finishing requests in flight ...", flush=True)
    await demo.stop()
    return 0


def main(args: argparse.Namespace) -> int:
    import uvloop

    from ..runtime.switch import raise_fd_limit

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raise_fd_limit()
    config_path = Path(getattr(args, "config", None) or DEMO_CONFIG)
    port = getattr(args, "port", None)
    # uvloop.run installs uvloop's loop for this run (uvloop.install() is deprecated in 3.12+).
    return uvloop.run(_serve(config_path, port))
