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

from yaml.nodes import Node

from ..spec import AdminSpec, LogSpec
from .listen import _base_dir
from .yamlnodes import OFF_WORDS, Issues, did_you_mean, is_off, mapping, read_fields, text

FORMATS = ("combined", "json")
STREAMS = ("stdout", "stderr")


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
    if value.lower() in OFF_WORDS:
        return ""
    if not value or any(c in value for c in " \t:\r\n") or not value.isascii():
        issues.add(node, f"{path}: {value!r} is not a header name")
        return None
    return value


READERS: dict[str, Callable[[Node, str, Issues], Any]] = {"access": _access, "format": _format,
                                                          "request_id_header": _id_header}


def _fields(node: Node, section: str, readers: dict[str, Callable[[Node, str, Issues], Any]],
            issues: Issues) -> dict[str, Any] | None:
    """A section's mapping read field by field; None for ``off`` or after reporting a mistake."""
    if is_off(node):
        return None
    m = mapping(node, section, issues, readers)
    if m is None:
        return None
    values = read_fields(m, readers, section, issues)
    if values is not None:
        values["_nodes"] = m
    return values


def _file(value: str, section: str, key: str, values: dict[str, Any], filename: str, issues: Issues) -> str:
    """A file path relative to the rule file's directory, whose directory must exist."""
    path = os.path.join(_base_dir(filename), value)
    if not os.path.isdir(os.path.dirname(path)):
        issues.add(values["_nodes"][key][1], f"{section}.{key}: directory {os.path.dirname(path)!r} does not exist")
    return path


def parse_log(node: Node, issues: Issues, filename: str) -> LogSpec:
    values = _fields(node, "log", READERS, issues)
    if values is None:
        return LogSpec()
    access = values.get("access")
    if access is not None:
        if not access or access.lower() in OFF_WORDS:
            access = None
        elif access not in STREAMS:
            access = _file(access, "log", "access", values, filename, issues)
    values["access"] = access
    del values["_nodes"]
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
    if is_off(node):
        return AdminSpec(socket="")
    values = _fields(node, "admin", ADMIN_READERS, issues)
    if values is None:
        return AdminSpec()
    sock = values.get("socket")
    if sock is not None:
        if sock.lower() in OFF_WORDS:
            sock = ""
        elif sock:
            sock = _file(sock, "admin", "socket", values, filename, issues)
        values["socket"] = sock
    del values["_nodes"]
    return AdminSpec(**values)
