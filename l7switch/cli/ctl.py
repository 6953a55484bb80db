"""``l7switch ctl [--socket PATH | -c FILE] [--json] COMMAND ...``: the runtime admin of a running
switch over its Unix socket (runtime/admin.py has the commands and the protocol).

Tables for people, ``--json`` for scripts. Exit 0 when the switch did it; 1 when it refused
(unknown server, a broken file on reload...) or cannot be reached, with one clear line.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import socket
import sys
from typing import Any

from ..config import load_config
from ..errors import ConfigError
from ..runtime.admin import default_socket

TIMEOUT = 60.0  # a reload may take a while (a big file, host names to resolve)

HELP = """commands:
  show pools | show servers [POOL] | show info | show client ADDRESS
  show persistence POOL [--limit N] | clear persistence POOL [KEY]
  set weight POOL/SERVER N|N%  |  drain POOL/SERVER | disable POOL/SERVER | enable POOL/SERVER
  reload | check"""


def socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    if args.config:
        try:
            spec = load_config(args.config).admin
        except ConfigError as exc:
            raise SystemExit(f"l7switch ctl: {args.config} has problems ({exc.issues[0]}); name the socket "
                             "with --socket") from None
        if spec.socket == "":
            raise SystemExit(f"l7switch ctl: {args.config} turns the admin socket off (admin: off)")
        if spec.socket:
            return spec.socket
    return default_socket()


def _owner(path: str) -> str:
    """Whose ``path`` is and its mode; or, when a directory on the way keeps us from even
    looking, which directory that is and whose."""
    def who(p: str) -> str:
        st = os.stat(p)
        try:
            name = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            name = f"uid {st.st_uid}"
        return f"{name}, mode {oct(st.st_mode & 0o777)[2:].zfill(4)}"
    try:
        return who(path)
    except PermissionError:
        parent = os.path.dirname(os.path.abspath(path))
        while parent != "/" and not os.access(os.path.dirname(parent), os.X_OK):
            parent = os.path.dirname(parent)
        try:
            return f"its directory {parent} is closed to you: {who(parent)}"
        except OSError:
            return f"its directory {parent} is closed to you"
    except OSError:
        return "unknown owner"


def call(path: str, words: list[str]) -> dict[str, Any]:
    """One command to the switch at ``path``; SystemExit with one line when it cannot be reached."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(TIMEOUT)
    try:
        try:
            s.connect(path)
        except FileNotFoundError:
            raise SystemExit(f"l7switch ctl: no admin socket at {path} (is the switch running? its rule "
                             "file's admin.socket names where; or use --socket PATH)") from None
        except PermissionError:
            raise SystemExit(f"l7switch ctl: permission denied on {path} ({_owner(path)}): run ctl as "
                             "the switch's user, or widen admin.mode") from None
        except ConnectionRefusedError:
            raise SystemExit(f"l7switch ctl: nobody is listening on {path} (a switch that has stopped?)") from None
        except OSError as exc:
            raise SystemExit(f"l7switch ctl: cannot connect to {path}: {exc.strerror or exc}") from None
        s.sendall(json.dumps({"args": words}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        raise SystemExit(f"l7switch ctl: no answer from {path} within {TIMEOUT:g}s") from None
    finally:
        s.close()
    try:
        reply: dict[str, Any] = json.loads(data)
    except ValueError:
        raise SystemExit(f"l7switch ctl: {path} did not answer as an l7switch does") from None
    return reply


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return " ".join(f"{k}={_cell(x)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(_cell(x) for x in v)
    return str(v)


def render(result: Any) -> str:
    """A list of rows as an aligned table; a mapping as 'key: value' lines."""
    if isinstance(result, list):
        if not result:
            return "(none)"
        if all(isinstance(x, str) for x in result):
            return "\n".join(result)
        cols = list(result[0])
        cells = [[_cell(row.get(c)) for c in cols] for row in result]
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
        lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)).rstrip()]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
        return "\n".join(lines)
    if isinstance(result, dict):
        width = max((len(k) for k in result), default=0)
        return "\n".join(f"{k.ljust(width)}  {_cell(v)}" for k, v in result.items())
    return _cell(result)


def cmd_ctl(args: argparse.Namespace) -> int:
    words = list(args.words)
    if not words:
        print(HELP, file=sys.stderr)
        return 1
    reply = call(socket_path(args), words)
    if not reply.get("ok"):
        print(f"l7switch ctl: {reply.get('error', 'refused')}", file=sys.stderr)
        return 1
    result = reply.get("result")
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


def add_parser(sub: Any) -> None:
    ctl = sub.add_parser("ctl", help="the runtime admin of a running switch (over its admin socket)",
                         epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ctl.add_argument("--socket", metavar="PATH", help="the admin socket (default: the rule file's, or "
                     f"{default_socket()})")
    ctl.add_argument("-c", "--config", metavar="FILE", help="read the socket path from this rule file")
    ctl.add_argument("--json", action="store_true", help="the result as JSON, for scripts")
    ctl.add_argument("words", nargs=argparse.REMAINDER, metavar="COMMAND", help="e.g. show servers web")
    ctl.set_defaults(func=cmd_ctl)
