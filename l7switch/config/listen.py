"""The ``listen:`` section: plain HTTP, HTTP over TLS terminated here, and TLS passthrough.

```yaml
listen:
  - address: 127.0.0.1:8080                       # plain HTTP (short form: "- 127.0.0.1:8080")
    upgrades: [websocket]                          # Upgrade tokens that may become tunnels; [] = none
  - address: 127.0.0.1:8443
    tls: {cert: site.pem, key: site.key, min_version: TLSv1.2, alpn: [http/1.1]}
  - address: 127.0.0.1:8444
    tls: {certs: [{cert: a.pem, key: a.key}, {cert: b.pem, key: b.key}]}   # by SNI; first = default
  - address: 127.0.0.1:9443
    mode: tls-passthrough                          # route the TLS stream by SNI, relay its bytes
    sni: {api.example.com: api, "*.example.com": web}
    default_pool: web
```

Like the rest of config.py this reports every problem in one pass, each at its line. Certificate
and key files are loaded at check time (``l7switch check`` fails on a bad key, not the first
handshake), with relative paths resolved against the rule file's directory, as nginx resolves
``ssl_certificate`` against its prefix. Cross-checks against pools run after pools and rules are
read: ``check_pool_use``.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..http.message import NEVER_TUNNELLED
from ..net.tls import TLS_VERSIONS, cert_names
from ..spec import DEFAULT_UPGRADES, ListenerSpec, TLSSpec
from .yamlnodes import (Issues, address, did_you_mean, expect, is_ip, is_null, mapping, nonempty_text,
                        text_list)

LISTEN_KEYS = ("address", "mode", "tls", "sni", "default_pool", "upgrades")
TLS_KEYS = ("cert", "key", "certs", "min_version", "alpn")
CERT_KEYS = ("cert", "key")
MODES = ("http", "tls-passthrough")
PASSTHROUGH = "tls-passthrough"
# ALPN names the switch can speak to a client: it is an HTTP/1.x proxy, so offering h2 would
# make an h2 client send HTTP/2 frames to an HTTP/1.1 parser.
ALPN_ALLOWED = ("http/1.1", "http/1.0")
# A DNS name as it appears in SNI (RFC 6066 §3: a host name, never an IP literal), or *.domain.
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_SNI_NAME = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")
_RETIRED = ("sslv2", "sslv3", "tlsv1", "tlsv1.0", "tlsv1.1")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2; an Upgrade protocol-name
DEFAULT_TLS = TLSSpec(())  # the defaults of min_version and alpn


@dataclass(slots=True)
class Listen:
    """The listeners read, plus what the pool cross-check needs."""
    specs: list[ListenerSpec] = field(default_factory=list)
    http: bool = False  # some listener carries HTTP, so the top-level default_pool is needed
    # Pools named by passthrough listeners: (pool, node naming it, path, listener address, line).
    refs: list[tuple[str, Node, str, str, int]] = field(default_factory=list)


def parse_listen(node: Node, issues: Issues, filename: str) -> Listen:
    out = Listen()
    if is_null(node) or (isinstance(node, SequenceNode) and not node.value):
        issues.add(node, "listen: expected at least one listener, e.g. '- address: 127.0.0.1:8080'")
        return out
    if not expect(node, SequenceNode, "listen", issues):
        return out
    base = _base_dir(filename)
    seen: dict[tuple[str, int], int] = {}
    for i, item in enumerate(node.value):
        path = f"listen[{i}]"
        addr_node: Node
        if isinstance(item, ScalarNode):  # short form: "- host:port", plain HTTP
            addr_node, apath, m = item, path, None
        else:
            m = mapping(item, path, issues, LISTEN_KEYS, required=("address",))
            if m is None or "address" not in m:
                continue
            addr_node, apath = m["address"][1], f"{path}.address"
        addr = address(addr_node, apath, issues)
        if addr is not None:
            if addr[1] != 0 and addr in seen:
                issues.add(addr_node, f"{apath}: duplicate listener {addr_node.value!r} "
                           f"(first at line {seen[addr]})")
            seen.setdefault(addr, addr_node.start_mark.line + 1)
        spec = _listener(m, path, addr, item, issues, base, out) if m is not None else (
            None if addr is None else ListenerSpec(*addr))
        if spec is not None:
            out.specs.append(spec)
            out.http = out.http or spec.mode == "http"
    return out


def _listener(m: dict[str, tuple[Node, Node]], path: str, addr: tuple[str, int] | None, item: Node,
              issues: Issues, base: str, out: Listen) -> ListenerSpec | None:
    n_before = len(issues)
    mode = "http"
    if "mode" in m:
        mnode = m["mode"][1]
        mode = nonempty_text(mnode, f"{path}.mode", issues, "http or tls-passthrough") or ""
        if mode and mode not in MODES:
            issues.add(mnode, f"{path}.mode: unknown mode {mode!r}{did_you_mean(mode, MODES)}")
            mode = ""
        if not mode:
            return None  # the mode decides which other keys are allowed: judge nothing more
    tls = None
    if "tls" in m:
        tkey, tnode = m["tls"]
        if mode == PASSTHROUGH:
            issues.add(tkey, f"{path}.tls: not allowed with mode tls-passthrough (passthrough does not "
                       "terminate TLS: the servers behind it hold the certificates)")
        else:
            tls = _tls(tnode, f"{path}.tls", issues, base)
    sni: list[tuple[str, str]] = []
    default_pool = None
    where = f"{addr[0]}:{addr[1]}" if addr is not None else path
    line = item.start_mark.line + 1
    for key in ("sni", "default_pool"):
        if key in m and mode != PASSTHROUGH:
            issues.add(m[key][0], f"{path}.{key}: only for 'mode: tls-passthrough' (an http listener "
                       "routes by the rules and the top-level default_pool)")
    if mode == PASSTHROUGH:
        if "sni" not in m and "default_pool" not in m:
            issues.add(item, f"{path}: a tls-passthrough listener needs 'sni' (server name -> pool), "
                       "'default_pool', or both")
        if "sni" in m:
            sni = _sni(m["sni"][1], f"{path}.sni", issues, out, where, line)
        if "default_pool" in m:
            dnode = m["default_pool"][1]
            default_pool = nonempty_text(dnode, f"{path}.default_pool", issues, "a pool name")
            if default_pool is not None:
                out.refs.append((default_pool, dnode, f"{path}.default_pool", where, line))
    upgrades = DEFAULT_UPGRADES
    if "upgrades" in m:
        ukey, unode = m["upgrades"]
        if mode == PASSTHROUGH:
            issues.add(ukey, f"{path}.upgrades: only for http listeners (a tls-passthrough listener "
                       "relays TLS bytes and never sees an Upgrade header)")
        else:
            upgrades = _upgrades(unode, f"{path}.upgrades", issues)
    if addr is None or len(issues) != n_before:
        return None
    return ListenerSpec(addr[0], addr[1], mode, tls, tuple(sni), default_pool, upgrades)


def _upgrades(node: Node, path: str, issues: Issues) -> tuple[str, ...]:
    """Lower-case Upgrade tokens (RFC 9110 §7.8 compares protocol names case-insensitively);
    an empty list means no request becomes a tunnel."""
    if isinstance(node, SequenceNode) and not node.value:
        return ()
    if is_null(node):
        issues.add(node, f"{path}: expected a list of Upgrade tokens such as [websocket], or [] for "
                   "none, found nothing")
        return DEFAULT_UPGRADES
    items = text_list(node, path, issues, "an Upgrade token such as 'websocket'")
    if items is None:
        return DEFAULT_UPGRADES
    out: list[str] = []
    for value, item in items:
        token = value.strip().lower()
        if not _TOKEN.fullmatch(token):
            issues.add(item, f"{path}: expected an Upgrade token such as 'websocket', found {value!r}")
        elif token.encode("ascii") in NEVER_TUNNELLED:
            issues.add(item, f"{path}: {value!r} is never tunnelled (HTTP/2 frames would pass the rules "
                       "unseen); clients that offer it are answered over HTTP/1.1")
        elif token in out:
            issues.add(item, f"{path}: {value!r} is listed twice; keep one")
        else:
            out.append(token)
    return tuple(out)


def _sni(node: Node, path: str, issues: Issues, out: Listen, where: str,
         line: int) -> list[tuple[str, str]]:
    entries = mapping(node, path, issues)
    if entries is None:
        return []
    if not entries:
        issues.add(node, f"{path}: expected at least one 'server name: pool' entry")
    result: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for name, (key, value) in entries.items():
        # SNI is compared case-insensitively (DNS names are; RFC 6066 §3), without a trailing dot.
        host = name.strip().lower().rstrip(".")
        if not _SNI_NAME.fullmatch(host) or is_ip(host):
            issues.add(key, f"{path}: {name!r} is not a host name or '*.domain' (SNI carries DNS "
                       "names only, never IP addresses)")
            continue
        if host in seen:
            issues.add(key, f"{path}: duplicate server name {name!r} (first at line {seen[host]})")
            continue
        seen[host] = key.start_mark.line + 1
        pool = nonempty_text(value, f"{path}.{name}", issues, "a pool name")
        if pool is not None:
            out.refs.append((pool, value, f"{path}.{name}", where, line))
            result.append((host, pool))
    return result


def _tls(node: Node, path: str, issues: Issues, base: str) -> TLSSpec | None:
    m = mapping(node, path, issues, TLS_KEYS)
    if m is None:
        return None
    n_before = len(issues)
    certs: list[tuple[str, str]] = []
    if "certs" in m and ("cert" in m or "key" in m):
        issues.add(m["certs"][0], f"{path}: use either 'cert' and 'key' (one certificate) or 'certs' "
                   "(several, chosen by SNI), not both")
    elif "certs" in m:
        cnode = m["certs"][1]
        if expect(cnode, SequenceNode, f"{path}.certs", issues):
            if not cnode.value:
                issues.add(cnode, f"{path}.certs: expected at least one {{cert: FILE, key: FILE}}")
            for i, entry in enumerate(cnode.value):
                pair = _cert_pair(entry, f"{path}.certs[{i}]", issues, base, need_names=i > 0)
                if pair is not None:
                    certs.append(pair)
    elif "cert" in m or "key" in m:
        pair = _cert_pair(node, path, issues, base, need_names=False, pairs=m)
        if pair is not None:
            certs.append(pair)
    else:
        issues.add(node, f"{path}: expected 'cert' and 'key' files, "
                   "or 'certs: [{cert: FILE, key: FILE}, ...]'")
    min_version: str = DEFAULT_TLS.min_version
    if "min_version" in m:
        vnode = m["min_version"][1]
        value = nonempty_text(vnode, f"{path}.min_version", issues, "TLSv1.2 or TLSv1.3")
        if value is not None:
            canon = {v.lower(): v for v in TLS_VERSIONS}.get(value.strip().lower())
            if value.strip().lower() in _RETIRED:
                issues.add(vnode, f"{path}.min_version: {value!r} is no longer allowed (TLS 1.0 and 1.1 "
                           f"are deprecated, RFC 8996); expected one of: {', '.join(TLS_VERSIONS)}")
            elif canon is None:
                issues.add(vnode, f"{path}.min_version: unknown version {value!r}"
                           f"{did_you_mean(value, TLS_VERSIONS)}")
            else:
                min_version = canon
    alpn: tuple[str, ...] = DEFAULT_TLS.alpn
    if "alpn" in m:
        names = text_list(m["alpn"][1], f"{path}.alpn", issues, "an ALPN protocol name")
        if names is not None:
            for name, n in names:
                if name not in ALPN_ALLOWED:
                    issues.add(n, f"{path}.alpn: {name!r} cannot be offered: the switch speaks "
                               f"HTTP/1.x only{did_you_mean(name, ALPN_ALLOWED)}")
            alpn = tuple(name for name, _ in names)
    if len(issues) != n_before:
        return None
    return TLSSpec(tuple(certs), min_version, alpn)


def _cert_pair(node: Node, path: str, issues: Issues, base: str, need_names: bool,
               pairs: Mapping[str, tuple[Node, Node]] | None = None) -> tuple[str, str] | None:
    """(certificate file, key file), both resolved and loaded once to prove they work."""
    m = pairs if pairs is not None else mapping(node, path, issues, CERT_KEYS, required=CERT_KEYS)
    if m is None:
        return None
    for key in CERT_KEYS:
        if key not in m and pairs is not None:
            issues.add(node, f"{path}: missing required key {key!r} ('cert' and 'key' go together)")
    if "cert" not in m or "key" not in m:
        return None
    files: dict[str, str] = {}
    for key in CERT_KEYS:
        fnode = m[key][1]
        value = nonempty_text(fnode, f"{path}.{key}", issues, "a file name")
        if value is None:
            continue
        resolved = os.path.join(base, os.path.expanduser(value))
        if not os.path.isfile(resolved):
            why = "no such file" if not os.path.exists(resolved) else "not a regular file"
            issues.add(fnode, f"{path}.{key}: cannot read {value!r}: {why} (looked for {resolved})")
            continue
        files[key] = resolved
    if len(files) != 2:
        return None
    cnode = m["cert"][1]
    problem = _load_problem(files["cert"], files["key"])
    if problem is not None:
        issues.add(cnode, f"{path}.cert: {problem}")
        return None
    if need_names and not _names_or_none(files["cert"]):
        issues.add(cnode, f"{path}.cert: the certificate names no DNS host in subjectAltName, so SNI "
                   "can never choose it (only the first certificate is used without a match)")
        return None
    return files["cert"], files["key"]


def _load_problem(cert: str, key: str) -> str | None:
    """Why this pair cannot serve, or None when ``load_cert_chain`` accepts it."""
    try:
        cert_names(cert)  # decodes the first certificate: tells a bad cert file from a bad key
    except (ssl.SSLError, ValueError):
        return f"{os.path.basename(cert)!r} is not a PEM certificate (expected '-----BEGIN CERTIFICATE-----')"

    def no_password() -> bytes:
        raise _Encrypted
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key, password=no_password)
    except _Encrypted:
        return (f"the key {os.path.basename(key)!r} is encrypted; l7switch needs an unencrypted key "
                "(it cannot prompt for a passphrase at start)")
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            return f"the key {os.path.basename(key)!r} does not belong to this certificate"
        return f"cannot load the key {os.path.basename(key)!r} (not a PEM private key?): {e.reason or e}"
    except OSError as e:
        return f"cannot read certificate or key: {e.strerror or e}"
    return None


class _Encrypted(Exception):
    pass


def _names_or_none(cert: str) -> tuple[str, ...]:
    try:
        return cert_names(cert)
    except (OSError, ValueError, ssl.SSLError):
        return ()


def _base_dir(filename: str) -> str:
    """Where relative certificate paths start: the rule file's directory (the working directory
    for text parsed without a file, e.g. '<string>' in tests)."""
    if filename.startswith("<") or not filename:
        return os.getcwd()
    return os.path.dirname(os.path.abspath(filename))


# ---- after pools and rules are read ----------------------------------------------------------

def check_pool_use(listen: Listen, pools: Mapping[str, Any], pool_names: Sequence[str],
                   pools_node: Node | None, http_pools: Iterable[tuple[str, str]],
                   issues: Issues) -> None:
    """Pools named by passthrough listeners exist, and each pool's persistence suits its traffic.

    ``http_pools``: (pool, who sends it HTTP requests: "rule 'x' (line 9)" or "default_pool") —
    only meaningful when some listener carries HTTP. Cookie persistence needs the HTTP messages
    a passthrough listener never sees; ``ssl_session`` persistence needs the TLS session IDs only a
    relayed handshake shows (with termination the switch is the TLS server itself).
    """
    passthrough_users: dict[str, tuple[str, int]] = {}
    for pool, node, path, where, line in listen.refs:
        if pool_names and pool not in pool_names:
            issues.add(node, f"{path}: unknown pool {pool!r}"
                       f"{did_you_mean(pool, pool_names, 'defined pools')}")
            continue
        passthrough_users.setdefault(pool, (where, line))
    http_users: dict[str, str] = {}
    if listen.http:
        for pool, who in http_pools:
            http_users.setdefault(pool, who)
    for name, spec in pools.items():
        method = getattr(getattr(spec, "persistence", None), "method", None)
        if method == "ssl_session" and name in http_users:
            issues.add(_persistence_node(pools_node, name),
                       f"pools.{name}.persistence: ssl_session persistence works only on tls-passthrough "
                       f"listeners (it reads TLS session IDs from relayed handshakes), but pool {name!r} "
                       f"gets HTTP requests ({http_users[name]}); use cookie or source")
        elif method == "cookie" and name in passthrough_users:
            where, line = passthrough_users[name]
            issues.add(_persistence_node(pools_node, name),
                       f"pools.{name}.persistence: cookie persistence cannot work behind the "
                       f"tls-passthrough listener {where} (line {line}): the switch never sees the "
                       "HTTP inside TLS it does not terminate; use ssl_session or source")


def _persistence_node(pools_node: Node | None, name: str) -> Any:
    """The pool's 'persistence' key, else the pool's name, else the pools section."""
    if not isinstance(pools_node, MappingNode):
        return pools_node
    for key, value in pools_node.value:
        if isinstance(key, ScalarNode) and key.value == name:
            if isinstance(value, MappingNode):
                for k, _ in value.value:
                    if isinstance(k, ScalarNode) and k.value == "persistence":
                        return k
            return key
    return pools_node

