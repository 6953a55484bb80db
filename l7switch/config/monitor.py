"""Reading the ``monitor`` and ``metrics`` sections::

    monitor:
      listen: 127.0.0.1:9443
      tls: {cert: monitor.pem, key: monitor.key}   # required; plain HTTP only with insecure: true
      users: monitor-users                         # l7switch passwd monitor-users alice --role admin
      session_timeout: 8h                          # a login unused this long ends
    metrics:
      listen: 127.0.0.1:9100                       # Prometheus /metrics, no auth

The monitor carries passwords and session cookies, so it refuses to run without TLS unless the
file says ``insecure: true`` out loud (HAProxy's stats page happily runs on plain HTTP with basic
auth; we do not make that the easy path). The users file is read here too, so ``check`` reports
its mistakes at its own lines. Paths are relative to the rule file's directory.
"""

from __future__ import annotations

import os

from yaml.nodes import Node

from ..spec import MetricsSpec, MonitorSpec
from .listen import _base_dir, _tls
from .users import load_users
from .yamlnodes import Issues, address, boolean, duration, is_off, mapping, nonempty_text

MONITOR_KEYS = ("listen", "tls", "users", "insecure", "session_timeout")
METRICS_KEYS = ("listen",)


def parse_monitor(node: Node, issues: Issues, filename: str) -> MonitorSpec | None:
    if is_off(node):
        return None
    m = mapping(node, "monitor", issues, MONITOR_KEYS, required=("listen", "users"))
    if m is None or "listen" not in m or "users" not in m:
        return None
    before = len(issues)
    where = address(m["listen"][1], "monitor.listen", issues)
    insecure = False
    if "insecure" in m:
        insecure = bool(boolean(m["insecure"][1], "monitor.insecure", issues))
    tls = None
    if "tls" in m:
        tls = _tls(m["tls"][1], "monitor.tls", issues, _base_dir(filename))
    elif not insecure:
        issues.add(m["listen"][0], "monitor: the monitor needs tls: {cert: FILE, key: FILE} (it carries "
                   "passwords and session cookies); for a bench on loopback say insecure: true")
    timeout = 8 * 3600.0
    if "session_timeout" in m:
        timeout = duration(m["session_timeout"][1], "monitor.session_timeout", issues) or timeout
    users = None
    unode = m["users"][1]
    value = nonempty_text(unode, "monitor.users", issues, "the users file (l7switch passwd FILE USER)")
    if value is not None:
        users = os.path.join(_base_dir(filename), value)
        found, problems = load_users(users)
        for problem in problems:
            issues.add(unode, f"monitor.users: {problem}")
        if not problems and not found:
            issues.add(unode, f"monitor.users: {users} has no user yet; add one with "
                       f"l7switch passwd {users} USER --role admin")
    if where is None or users is None or len(issues) != before:
        return None
    return MonitorSpec(where[0], where[1], users, tls, insecure, timeout)


def parse_metrics(node: Node, issues: Issues, filename: str) -> MetricsSpec | None:
    if is_off(node):
        return None
    m = mapping(node, "metrics", issues, METRICS_KEYS, required=METRICS_KEYS)
    if m is None or "listen" not in m:
        return None
    where = address(m["listen"][1], "metrics.listen", issues)
    if where is None:
        return None
    return MetricsSpec(where[0], where[1])
