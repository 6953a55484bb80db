"""Reading the ``log`` and ``admin`` sections::

    log:
      access: /var/log/l7switch/access.log   # or stdout, stderr, off (the default)
      format: json                           # or combined (the default: Apache/nginx's)
      request_id_header: X-Request-ID        # the id to servers when absent; off: not sent
    admin:
      socket: /run/l7switch.sock             # l7switch ctl's socket; off: none
      mode: "0600"                           # who may use it (owner only by default)

A relative path is resolved against the rule file's directory, as certificates are. Problems are
recorded with their position; nothing raises.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from yaml.nodes import Node, ScalarNode

from ..spec import AdminSpec, LogSpec
from .listen import _base_dir
from .yamlnodes import Issues, did_you_mean, mapping, read_fields, text

FORMATS = ("combined", "json")
STREAMS = ("stdout", "stderr")
_OFF = ("off", "none", "false", "no")


def _access(node: Node, path: str, issues: Issues) -> str:
    value = text(node, path, issues, "stdout, stderr, off or a file path")
    if value is None:
        return ""
    value = value.strip()
    if not value:
        issues.add(node, f"{path}: expected stdout, stderr, off or a file path")
        return ""
    return value


def _format(node: Node, path: str, issues: Issues) -> str | None:
    value = text(node, path, issues, "combined or json")
    if value is None:
        return None
    if value.strip().lower() not in FORMATS:
        issues.add(node, f"{path}: unknown format {value!r}{did_you_mean(value.strip().lower(), FORMATS)}")
        return None
    return value.strip().lower()


def _id_header(node: Node, path: str, issues: Issues) -> str | None:
    value = text(node, path, issues, "a header name such as X-Request-ID, or off")
    if value is None:
        return None
    value = value.strip()
    if value.lower() in _OFF:
        return ""
    if not value or any(c in value for c in " \t:\r\n") or not value.isascii():
        issues.add(node, f"{path}: {value!r} is not a header name")
        return None
    return value


READERS: dict[str, Callable[[Node, str, Issues], Any]] = {"access": _access, "format": _format,
                                                          "request_id_header": _id_header}


def parse_log(node: Node, issues: Issues, filename: str) -> LogSpec:
    if isinstance(node, ScalarNode) and node.value.strip().lower() in _OFF:
        return LogSpec()
    m = mapping(node, "log", issues, READERS)
    if m is None:
        return LogSpec()
    values = read_fields(m, READERS, "log", issues)
    if values is None:
        return LogSpec()
    access = values.get("access")
    if access is not None:
        if not access or access.lower() in _OFF:
            access = None
        elif access not in STREAMS:
            access = os.path.join(_base_dir(filename), access)
            if not os.path.isdir(os.path.dirname(access)):
                issues.add(m["access"][1], f"log.access: directory {os.path.dirname(access)!r} does not exist")
    values["access"] = access
    return LogSpec(**values)


def _mode(node: Node, path: str, issues: Issues) -> int | None:
    value = text(node, path, issues, "a file mode such as '0600'")
    if value is None:
        return None
    try:
        mode = int(value.strip(), 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        issues.add(node, f"{path}: expected a file mode in octal such as '0600' or '0660', found {value!r}")
        return None
    return mode


ADMIN_READERS: dict[str, Callable[[Node, str, Issues], Any]] = {"socket": _access, "mode": _mode}


def parse_admin(node: Node, issues: Issues, filename: str) -> AdminSpec:
    if isinstance(node, ScalarNode) and node.value.strip().lower() in _OFF:
        return AdminSpec(socket="")
    m = mapping(node, "admin", issues, ADMIN_READERS)
    if m is None:
        return AdminSpec()
    values = read_fields(m, ADMIN_READERS, "admin", issues)
    if values is None:
        return AdminSpec()
    sock = values.get("socket")
    if sock is not None:
        if sock.lower() in _OFF:
            sock = ""
        elif sock:
            sock = os.path.join(_base_dir(filename), sock)
            if not os.path.isdir(os.path.dirname(sock)):
                issues.add(m["socket"][1], f"admin.socket: directory {os.path.dirname(sock)!r} does not exist")
        values["socket"] = sock
    return AdminSpec(**values)
