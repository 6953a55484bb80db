"""Reading a pool's availability keys: active health checks, the agent, passive checks, slow start,
retries, the retry budget, maxconn and the queue; and merging the pool's per-server defaults with
each server's overrides into the resolved values a ``ServerSpec`` carries::

    pools:
      html:
        servers:
          - {address: 127.0.0.1:9002, maxconn: 50, init_state: down,
             health: {port: 8082, http: {path: /ping}},   # merged key by key over the pool's
             agent: off}                                  # off: none for this server
        health: {http: {path: /health, expect: 200-399}, interval: 2s, timeout: 1s, rise: 2, fall: 3}
        agent: {port: 9999, interval: 5s}
        init_state: up
        maxconn: 100
        passive: {observe: layer4, error_limit: 5, ejection: 30s, max_ejection: 5m}
        slow_start: 30s
        retries: 2
        retry_budget: 20%
        queue: {timeout: 5s, max: 10000}

``health``, ``agent``, ``init_state`` and ``maxconn`` are per-server settings with pool defaults;
the rest belong to the pool. The pool's ``backup:`` list is read by load.py with the servers.

Like the rest of config/, every problem is recorded with its position and nothing raises. A
checks mapping is kept as a ``Layer`` (each value with the node it was written at) until it is
merged, so a problem found only in the merge (a server's interval below the pool's timeout) is
reported at the line that caused it; problems the pool's layer causes for several servers are
reported once.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from yaml.nodes import Node, ScalarNode, SequenceNode

from ..errors import ConfigIssue
from ..spec import AgentSpec, HealthSpec, HttpCheckSpec, PassiveSpec, QueueSpec, ServerSpec
from .yamlnodes import Issues, did_you_mean, duration, integer, is_null, kind, mapping, nonempty_text, text

# Keys a pool takes for availability (besides load.py's scheduler, servers, persistence), and the
# subset a server may override.
POOL_KEYS = ("backup", "health", "agent", "init_state", "maxconn", "passive", "slow_start", "retries",
             "retry_budget", "queue")
SERVER_KEYS = ("health", "agent", "init_state", "maxconn")
INIT_STATES = ("up", "down")
OBSERVE = ("off", "layer4", "layer7")
_OFF = ("off", "false", "no")  # `health: off`; YAML 1.1's words for false, as boolean() reads them
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2 token (a method)
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")  # would break the request line or a header of a check
_PERCENT = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*%")
_FRACTION = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")

# The spec's defaults (slots dataclasses keep no class-level defaults to read them from).
_HEALTH, _AGENT, _PASSIVE = HealthSpec(), AgentSpec(port=0), PassiveSpec()

Reader = Callable[[Node, str, Issues], Any]
Entry = tuple[Any, Node, str]  # a value read, the node it was written at, its key path


@dataclass
class Layer:
    """One ``health:`` / ``agent:`` (or ``http:``) mapping as written, or its ``off``.

    ``bad`` names the keys written with a bad value (already reported): a check that would need
    them is skipped rather than reported with a default in their place. "*" means the whole
    mapping was unreadable."""
    node: Node
    path: str
    off: bool = False
    values: dict[str, Entry] = field(default_factory=dict)
    bad: set[str] = field(default_factory=set)


def merge(base: Layer | None, over: Layer | None) -> Layer | None:
    """``over`` key by key on top of ``base`` (``http`` too, recursively); an ``off`` wins whole."""
    if over is None:
        return base
    if base is None or base.off or over.off:
        return over
    values = dict(base.values)
    for key, entry in over.values.items():
        below = values.get(key)
        if below is not None and isinstance(below[0], Layer) and isinstance(entry[0], Layer):
            entry = (merge(below[0], entry[0]), entry[1], entry[2])
        values[key] = entry
    return Layer(over.node, over.path, False, values, (base.bad - over.values.keys()) | over.bad)


def _once(issues: Issues, node: Node, message: str) -> None:
    """Record ``message`` unless it already is: a pool default resolved for each of its servers
    must not report its own mistake once per server."""
    mark = node.start_mark
    if ConfigIssue(issues.filename, mark.line + 1, mark.column + 1, message) not in issues.items:
        issues.add(node, message)


def _is_off(node: Node) -> bool:
    return isinstance(node, ScalarNode) and not is_null(node) and node.value.strip().lower() in _OFF


def _layer(node: Node, path: str, issues: Issues, readers: Mapping[str, Reader], what: str) -> Layer:
    if _is_off(node):
        return Layer(node, path, off=True)
    if is_null(node):
        issues.add(node, f"{path}: expected a mapping ({what}) or off, found nothing")
        return Layer(node, path, bad={"*"})
    if isinstance(node, ScalarNode):
        issues.add(node, f"{path}: expected a mapping ({what}) or off, found {kind(node)}")
        return Layer(node, path, bad={"*"})
    m = mapping(node, path, issues, readers)
    if m is None:
        return Layer(node, path, bad={"*"})
    layer = Layer(node, path)
    for key, (_, vnode) in m.items():
        value = readers[key](vnode, f"{path}.{key}", issues)
        if value is None:
            layer.bad.add(key)
        else:
            layer.values[key] = (value, vnode, f"{path}.{key}")
    return layer


# ---- single values ---------------------------------------------------------------------------------

def _port(node: Node, path: str, issues: Issues) -> int | None:
    n = integer(node, path, issues, minimum=1)
    if n is not None and n > 65535:
        issues.add(node, f"{path}: expected a port from 1 to 65535, found {node.value!r}")
        return None
    return n


def _at_least(minimum: int) -> Reader:
    return lambda n, p, i: integer(n, p, i, minimum=minimum)


def _choice(choices: tuple[str, ...]) -> Reader:
    def read(node: Node, path: str, issues: Issues) -> str | None:
        value = nonempty_text(node, path, issues, " or ".join(choices))
        if value is not None and value.strip().lower() not in choices:
            issues.add(node, f"{path}: expected {' or '.join(choices)}, found {value!r}"
                       f"{did_you_mean(value, choices)}")
            return None
        return None if value is None else value.strip().lower()
    return read


def _check_path(node: Node, path: str, issues: Issues) -> str | None:
    value = nonempty_text(node, path, issues, "a path such as /health")
    if value is None:
        return None
    if not value.startswith("/") or _UNSAFE.search(value):
        issues.add(node, f"{path}: expected a path starting with '/' and without spaces or control "
                   f"characters (it is sent in the request line), found {value!r}")
        return None
    return value


def _method(node: Node, path: str, issues: Issues) -> str | None:
    value = nonempty_text(node, path, issues, "an HTTP method such as GET")
    if value is None:
        return None
    if not _TOKEN.fullmatch(value):
        issues.add(node, f"{path}: expected an HTTP method such as 'GET', found {value!r}")
        return None
    if value != value.upper():  # RFC 9110 §9.1: case-sensitive; servers refuse "get"
        issues.add(node, f"{path}: methods are case-sensitive; did you mean {value.upper()!r}?")
        return None
    return value


def _host(node: Node, path: str, issues: Issues) -> str | None:
    value = nonempty_text(node, path, issues, "a host name")
    if value is not None and _UNSAFE.search(value):
        issues.add(node, f"{path}: expected a Host header value without spaces or control characters, "
                   f"found {value!r}")
        return None
    return value


def _status_range(node: Node, path: str, issues: Issues) -> tuple[int, int] | None:
    """200, "200-399" or "2xx": inclusive status bounds within 100..599 (RFC 9110 §15)."""
    value = text(node, path, issues, "a status such as 200, '200-399' or '2xx'")
    if value is None:
        return None
    s = value.strip().lower()
    m = re.fullmatch(r"([1-5])xx", s)
    if m:
        return int(m.group(1)) * 100, int(m.group(1)) * 100 + 99
    m = re.fullmatch(r"([0-9]{3})(?:\s*-\s*([0-9]{3}))?", s)
    if not m:
        issues.add(node, f"{path}: expected a status such as 200, a range such as '200-399' or a class "
                   f"such as '2xx', found {value!r}")
        return None
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) else lo
    if not (100 <= lo <= 599 and 100 <= hi <= 599):
        issues.add(node, f"{path}: status codes are 100 to 599, found {value!r}")
        return None
    if lo > hi:
        issues.add(node, f"{path}: range {value!r} is empty; write the lower status first")
        return None
    return lo, hi


def _expect(node: Node, path: str, issues: Issues) -> tuple[tuple[int, int], ...] | None:
    if not isinstance(node, SequenceNode):
        one = _status_range(node, path, issues)
        return None if one is None else (one,)
    if not node.value:
        issues.add(node, f"{path}: expected a status, a range or a list of them, found an empty list")
        return None
    ranges = [_status_range(item, f"{path}[{i}]", issues) for i, item in enumerate(node.value)]
    return None if any(r is None for r in ranges) else tuple(r for r in ranges if r is not None)


def _ratio(node: Node, path: str, issues: Issues) -> float | None:
    """"20%" or 0.2: a share of requests, 0 to 1."""
    value = text(node, path, issues, "a percentage such as '20%' or a fraction such as 0.2")
    if value is None:
        return None
    s = value.strip()
    m = _PERCENT.fullmatch(s)
    share = float(m.group(1)) / 100 if m else float(s) if _FRACTION.fullmatch(s) else None
    if share is None or share > 1:
        hint = f"; did you mean '{s}%'?" if not m and share is not None and share <= 100 else ""
        issues.add(node, f"{path}: expected a percentage from 0% to 100% or a fraction from 0 to 1, "
                   f"found {value!r}{hint}")
        return None
    return share


def _zero_or_duration(node: Node, path: str, issues: Issues) -> float | None:
    return duration(node, path, issues, allow_zero=True)


HTTP_READERS: dict[str, Reader] = {"path": _check_path, "method": _method, "host": _host,
                                   "expect": _expect,
                                   "body": lambda n, p, i: nonempty_text(n, p, i, "a text")}


def _http(node: Node, path: str, issues: Issues) -> Layer:
    return _layer(node, path, issues, HTTP_READERS, "{} for GET /")


HEALTH_READERS: dict[str, Reader] = {"http": _http, "interval": duration, "timeout": duration,
                                     "rise": _at_least(1), "fall": _at_least(1), "port": _port}
AGENT_READERS: dict[str, Reader] = {"port": _port, "interval": duration, "timeout": duration}
PASSIVE_READERS: dict[str, Reader] = {"observe": _choice(OBSERVE), "error_limit": _at_least(1),
                                      "ejection": duration, "max_ejection": duration}
QUEUE_READERS: dict[str, Reader] = {"timeout": duration, "max": _at_least(1)}


# ---- resolving a layer -------------------------------------------------------------------------------

def _timing(layer: Layer, default: HealthSpec | AgentSpec, issues: Issues) -> tuple[float, float] | None:
    """(interval, timeout). A timeout not written is the spec's default (1 s) or half the interval
    when that is shorter, so a short interval needs no timeout written. A written one must be
    below the interval, so that a check ends before the next one starts; if not, that is reported
    at the more specific of the two (a server's override beats the pool's value), once."""
    if {"interval", "timeout", "*"} & layer.bad:
        return None
    i = layer.values.get("interval")
    t = layer.values.get("timeout")
    interval = i[0] if i else default.interval
    if t is None:
        return interval, min(default.timeout, interval / 2)
    if t[0] < interval:
        return interval, t[0]
    own = layer.path + "."
    if i is not None and i[2].startswith(own) and not t[2].startswith(own):
        issues.add(i[1], f"{i[2]}: interval {i[1].value!r} must be longer than the timeout "
                   f"{t[1].value!r} (line {t[1].start_mark.line + 1}), so a check ends before the next")
    else:
        where = f"interval {i[1].value!r} (line {i[1].start_mark.line + 1})" if i else \
            f"the default interval {default.interval:g}s"
        _once(issues, t[1], f"{t[2]}: timeout {t[1].value!r} must be shorter than {where}, so a "
              "check ends before the next")
    return None


def _values(layer: Layer) -> dict[str, Any]:
    return {key: entry[0] for key, entry in layer.values.items()}


def health_spec(layer: Layer | None, issues: Issues) -> HealthSpec | None:
    if layer is None or layer.off:
        return None
    timing = _timing(layer, _HEALTH, issues)
    if timing is None or layer.bad:
        return None
    values = _values(layer)
    http: Layer | None = values.pop("http", None)
    if http is not None and http.bad:
        return None
    check = None if http is None or http.off else HttpCheckSpec(**_values(http))
    if check is not None and check.method == "HEAD" and check.body is not None and http is not None:
        # A HEAD answer has no body (RFC 9110 §9.3.2): this check could never pass.
        _once(issues, http.values["body"][1], f"{http.path}.body: a HEAD check gets no body to "
              "match; use method GET, or drop body")
        return None
    values["interval"], values["timeout"] = timing
    return HealthSpec(http=check, **values)


def agent_spec(layer: Layer | None, issues: Issues) -> AgentSpec | None:
    if layer is None or layer.off:
        return None
    timing = _timing(layer, _AGENT, issues)
    if "port" not in layer.values and not layer.bad:
        # Reported at the agent mapping that lacks it: the pool's once, or a server's own.
        _once(issues, layer.node, f"{layer.path}: missing required key 'port' (the agent's port on "
              "each server's host)")
        return None
    if timing is None or layer.bad:
        return None
    return AgentSpec(port=layer.values["port"][0], interval=timing[0], timeout=timing[1])


# ---- pools and their servers -----------------------------------------------------------------------

@dataclass
class Overrides:
    """A server's own availability keys, read but not yet merged with the pool's."""
    health: Layer | None = None
    agent: Layer | None = None
    init_state: Entry | None = None
    maxconn: int | None = None
    failed: bool = False


class Defaults:
    """The pool's per-server settings (``health``, ``agent``, ``init_state``, ``maxconn``)."""

    def __init__(self, m: Mapping[str, tuple[Node, Node]], path: str, issues: Issues) -> None:
        self.path = path
        self.own = read_overrides(m, path, issues)
        # The pool's own timings are checked even if every server overrides them: a mistake
        # written is reported where it is written.
        health_spec(self.own.health, issues)
        if self.own.agent is not None and not self.own.agent.off:
            _timing(self.own.agent, _AGENT, issues)

    def apply(self, spec: ServerSpec, over: Overrides, item: Node, path: str,
              issues: Issues) -> ServerSpec | None:
        """``spec`` with the resolved health, agent, maxconn and init_down; None on a problem."""
        if over.failed:
            return None
        health_layer = merge(self.own.health, over.health)
        agent_layer = merge(self.own.agent, over.agent)
        n_before = len(issues)
        health = health_spec(health_layer, issues)
        agent = agent_spec(agent_layer, issues)
        state = over.init_state or self.own.init_state
        live_health, live_agent = (x is not None and not x.off for x in (health_layer, agent_layer))
        if state is not None and state[0] == "down" and not (live_health or live_agent):
            _never_up(spec, over, state, self.own, item, path, issues)
        # None from a live layer is a problem, reported now or (once) for an earlier server.
        if (len(issues) != n_before or self.own.failed or (live_health and health is None)
                or (live_agent and agent is None)):
            return None
        maxconn = over.maxconn or self.own.maxconn or 0
        return dataclasses.replace(spec, health=health, agent=agent, maxconn=maxconn,
                                   init_down=state is not None and state[0] == "down")


def _never_up(spec: ServerSpec, over: Overrides, state: Entry, pool: Overrides, item: Node,
              path: str, issues: Issues) -> None:
    """``init_state: down`` where nothing would ever mark the server up."""
    if any(x is not None and "*" in x.bad for x in (over.health, over.agent, pool.health, pool.agent)):
        return  # a checks mapping that could not be read is reported already
    fix = "it would never come up: add health: or agent:"
    if state is over.init_state:
        issues.add(state[1], f"{state[2]}: server {spec.name!r} starts down but has no health: or "
                   f"agent: checks; {fix}")
    elif over.health is not None or over.agent is not None:  # it turned the pool's checks off
        issues.add(item, f"{path}: server {spec.name!r} starts down (init_state: down at line "
                   f"{state[1].start_mark.line + 1}) but its checks are off; {fix}")
    else:
        _once(issues, state[1], f"{state[2]}: servers start down but the pool has no health: or "
              f"agent: checks; {fix}")


def read_overrides(m: Mapping[str, tuple[Node, Node]], path: str, issues: Issues) -> Overrides:
    """The per-server keys of a server's (or, as defaults, a pool's) mapping."""
    over = Overrides()
    n_before = len(issues)
    if "health" in m:
        over.health = _layer(m["health"][1], f"{path}.health", issues, HEALTH_READERS,
                             "{} for TCP connect checks")
    if "agent" in m:
        over.agent = _layer(m["agent"][1], f"{path}.agent", issues, AGENT_READERS, "with its port")
    if "init_state" in m:
        node = m["init_state"][1]
        state = _choice(INIT_STATES)(node, f"{path}.init_state", issues)
        if state is not None:
            over.init_state = (state, node, f"{path}.init_state")
    if "maxconn" in m:
        over.maxconn = integer(m["maxconn"][1], f"{path}.maxconn", issues, minimum=1)
    over.failed = len(issues) != n_before
    return over


def pool_settings(m: Mapping[str, tuple[Node, Node]], path: str, issues: Issues) -> dict[str, Any]:
    """PoolSpec's passive, slow_start, retries, retry_budget and queue, as keyword arguments
    (only those written; the spec's defaults stand for the others)."""
    out: dict[str, Any] = {}
    if "passive" in m:
        passive = _passive(m["passive"][1], f"{path}.passive", issues)
        if passive is not None:
            out["passive"] = passive
    if "queue" in m:
        queue = _layer(m["queue"][1], f"{path}.queue", issues, QUEUE_READERS, "with timeout and max")
        if queue.off:
            issues.add(queue.node, f"{path}.queue: a queue cannot be turned off; without maxconn "
                       "nothing waits in it")
        elif not queue.bad:
            out["queue"] = QueueSpec(**_values(queue))
    readers: dict[str, Reader] = {"slow_start": _zero_or_duration, "retries": _at_least(0),
                                  "retry_budget": _ratio}
    for key, read in readers.items():
        if key in m:
            value = read(m[key][1], f"{path}.{key}", issues)
            if value is not None:
                out[key] = value
    return out


def _passive(node: Node, path: str, issues: Issues) -> PassiveSpec | None:
    layer = _layer(node, path, issues, PASSIVE_READERS, "observe, error_limit, ejection, max_ejection")
    if layer.off:
        return PassiveSpec(observe="off")
    if layer.bad:
        return None
    e = layer.values.get("ejection")
    x = layer.values.get("max_ejection")
    ejection = e[0] if e else _PASSIVE.ejection
    most = x[0] if x else _PASSIVE.max_ejection
    if ejection > most:  # Envoy doubles the ejection on each repeat, up to the cap
        if e is not None:
            cap = f"max_ejection {x[1].value!r} (line {x[1].start_mark.line + 1})" if x else \
                f"the default max_ejection {most:g}s"
            issues.add(e[1], f"{e[2]}: ejection {e[1].value!r} is longer than {cap}")
        elif x is not None:
            issues.add(x[1], f"{x[2]}: max_ejection {x[1].value!r} is shorter than the default "
                       f"ejection {ejection:g}s")
        return None
    return PassiveSpec(**_values(layer))
