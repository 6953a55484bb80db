"""The ``l7switch`` command: run, check, explain, ctl, demo.

Exit codes: 0 success, 1 a rule file with problems (each printed as FILE:LINE:COL: message,
the format editors and CI annotators jump to), 2 bad command-line usage (argparse's own).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..version import __version__, build
from ..balance.build import explain_choice
from ..config import load_config
from ..errors import ConfigError
from ..guard.clients import describe
from ..http.rules import RequestView, Router
from ..spec import Config
from .ctl import add_parser as add_ctl


def _load(path: str) -> Config | None:
    """The config, or None after printing every issue (sorted by position) to stdout."""
    try:
        return load_config(path)
    except ConfigError as e:
        issues = sorted(e.issues, key=lambda i: (i.line, i.column))
        for issue in issues:
            print(issue)
        print(f"{path}: {len(issues)} problem{'s' if len(issues) != 1 else ''}", file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        config = _load(path)
        if config is None:
            status = 1
            continue
        n_pools, n_rules, n_listen = len(config.pools), len(config.rules), len(config.listeners)
        n_tests = len(config.tests)
        tests = f", {n_tests} test{'s' if n_tests != 1 else ''} passed" if n_tests else ""
        print(f"{path}: OK ({n_pools} pool{'s' if n_pools != 1 else ''}, "
              f"{n_rules} rule{'s' if n_rules != 1 else ''}, "
              f"{n_listen} listener{'s' if n_listen != 1 else ''}{tests})")
    return status


def _header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def cmd_explain(args: argparse.Namespace) -> int:
    config = _load(args.file)
    if config is None:
        return 1
    if not config.default_pool:  # only tls-passthrough listeners: no rules route HTTP here
        print(f"{args.file}: no http listener; tls-passthrough listeners route by SNI, not by URL",
              file=sys.stderr)
        return 1
    view = RequestView.from_url(args.method, args.url, list(args.headers))
    router = Router.from_specs(config.rules, config.default_pool)
    print(router.explain(view, config.pools))
    _, pool = router.route(view)
    print("\n".join(explain_choice(config.pools[pool], view, args.client)))
    if args.live:
        # The running switch's own table, through its admin socket: is this client limited now?
        from .ctl import call, socket_path

        reply = call(socket_path(argparse.Namespace(socket=args.socket, config=args.file)),
                     ["show", "client", args.client])
        if not reply.get("ok"):
            print(f"l7switch explain: {reply.get('error')}", file=sys.stderr)
            return 1
        print("\n".join(reply["result"]))
    elif config.limits.per_client is not None:
        # From the file alone: the client's key and its limits (--live asks the running switch).
        print("\n".join(describe(None, config.limits.per_client, args.client)))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.file is not None and args.config is not None and args.file != args.config:
        print(f"l7switch run: two rule files given ({args.file}, {args.config}); name one",
              file=sys.stderr)
        return 2
    path = args.file or args.config
    if path is None:
        print("l7switch run: a rule file is needed: l7switch run FILE (or -c FILE)", file=sys.stderr)
        return 2
    config = _load(path)
    if config is None:
        return 1
    workers = args.workers if args.workers is not None else config.workers
    if workers != 1:
        from ..runtime.workers import resolve_workers, run_master

        return run_master(config, resolve_workers(workers), args.log_level)
    from ..runtime.switch import run  # imported late: check/explain need no event loop

    return run(config, args.log_level)


def cmd_worker(args: argparse.Namespace) -> int:
    import json

    from ..runtime.workers import worker_main

    return worker_main(args.slot, json.loads(args.fds), args.file, args.admin, args.log_level, args.of)


def _workers_arg(text: str) -> int:
    if text == "auto":
        return 0
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None
    if not 1 <= n <= 256:
        raise argparse.ArgumentTypeError(f"expected 1..256 or auto, got {n}")
    return n


def cmd_passwd(args: argparse.Namespace) -> int:
    """``l7switch passwd FILE USER [--role admin|viewer]``: add a monitor user or change one."""
    import getpass

    from ..config.users import MAX_PASSWORD, check_name, set_user

    why = check_name(args.user)
    if why is not None:
        print(f"l7switch passwd: {why}", file=sys.stderr)
        return 1
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        try:
            password = getpass.getpass(f"password for {args.user}: ")
            if getpass.getpass("again: ") != password:
                print("l7switch passwd: the two passwords differ; nothing changed", file=sys.stderr)
                return 1
        except EOFError:
            print("l7switch passwd: no terminal to read the password from (use --password-stdin)",
                  file=sys.stderr)
            return 1
    if not password or len(password) > MAX_PASSWORD:
        print(f"l7switch passwd: a password is 1 to {MAX_PASSWORD} characters", file=sys.stderr)
        return 1
    try:
        new = set_user(args.file, args.user, args.role, password)
    except OSError as exc:
        print(f"l7switch passwd: cannot write {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"{'added' if new else 'changed'} {args.user} ({args.role}) in {args.file}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..devtools.demo import main as demo_main

    return demo_main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="l7switch", description="A content-based Layer-7 HTTP switch.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}, {build()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="serve with a rule file")
    run.add_argument("file", nargs="?", metavar="FILE", help="rule file (YAML)")
    run.add_argument("-c", "--config", metavar="FILE", help="the rule file, as an option (as nginx -c)")
    run.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                     help="the event log's threshold (stderr; default info)")
    run.add_argument("--workers", type=_workers_arg, default=None, metavar="N|auto",
                     help="worker processes (default: the file's workers:, else 1)")
    run.set_defaults(func=cmd_run)

    # A worker of a master (runtime/workers.py): started by `run --workers N`, not by people.
    worker = sub.add_parser("worker")
    worker.add_argument("file")
    worker.add_argument("--slot", type=int, required=True)
    worker.add_argument("--of", type=int, default=1)  # workers in all (Scheduler.shared)
    worker.add_argument("--fds", required=True)
    worker.add_argument("--admin", default="")
    worker.add_argument("--log-level", default="info")
    worker.set_defaults(func=cmd_worker)

    check = sub.add_parser("check", help="validate rule files and report every problem")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(func=cmd_check)

    explain = sub.add_parser("explain", help="show which rule and pool a request would get, and why")
    explain.add_argument("file", metavar="FILE")
    explain.add_argument("url", metavar="URL", help="http://host/path?query or /path?query")
    explain.add_argument("-X", "--method", default="GET", help="request method (default GET)")
    explain.add_argument("-H", "--header", dest="headers", action="append", type=_header, default=[],
                         metavar="'Name: value'", help="a request header (repeatable)")
    explain.add_argument("--client", default="127.0.0.1", metavar="ADDR",
                         help="client address, for hash_key: source and per-client limits (default 127.0.0.1)")
    explain.add_argument("--live", action="store_true",
                         help="ask the running switch (admin socket) whether --client is limited now")
    explain.add_argument("--socket", metavar="PATH", help="with --live: the admin socket (default: the file's)")
    explain.set_defaults(func=cmd_explain)

    add_ctl(sub)

    passwd = sub.add_parser("passwd", help="add or change a user of the monitor (a users file)")
    passwd.add_argument("file", metavar="FILE", help="the users file (monitor.users); made if missing")
    passwd.add_argument("user", metavar="USER")
    passwd.add_argument("--role", choices=("admin", "viewer"), default="viewer",
                        help="admin may drain, disable, enable and set weights; viewer only sees (default)")
    passwd.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of stdin (scripts), not the terminal")
    passwd.set_defaults(func=cmd_passwd)

    demo = sub.add_parser("demo", help="start a switch with demo origin servers")
    demo.add_argument("--port", type=int, default=8080, help="switch port (default 8080)")
    demo.add_argument("-c", "--config", default=None, metavar="FILE",
                      help="rule file whose pools the demo starts origins for (default rules/demo.yaml)")
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130  # 128 + SIGINT, the shell's convention


if __name__ == "__main__":
    sys.exit(main())
