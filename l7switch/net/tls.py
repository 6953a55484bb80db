"""TLS termination: a listener's ``TLSSpec`` in, the ``ssl.SSLContext`` its server uses out.

One context per certificate, built once when the switch starts (never per connection). With
several certificates the first is the default, and an SNI callback moves a handshake to the
context whose certificate names the requested host: exact names first, then ``*.domain``
(one label, RFC 6125 §6.4.3), in the order the certificates are listed; no match, or no SNI at
all, keeps the default, as nginx's default_server does.

The names come from each certificate's subjectAltName DNS entries, read with the standard
library's certificate decoder, so no YAML has to repeat them and they cannot drift apart.
"""

from __future__ import annotations

import ssl

from ..spec import TLSSpec

# Mozilla's "intermediate" profile accepts TLS 1.2 and 1.3; 1.0 and 1.1 are gone (RFC 8996).
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
_VERSION = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def server_context(spec: TLSSpec) -> ssl.SSLContext:
    """The listener's context; with several certificates it switches by SNI."""
    contexts = [_context(spec, cert, key) for cert, key in spec.certs]
    default = contexts[0]
    if len(contexts) == 1:
        return default
    exact: dict[str, ssl.SSLContext] = {}
    wildcard: dict[str, ssl.SSLContext] = {}  # "example.com" for a "*.example.com" certificate
    for ctx, (cert, _) in zip(contexts, spec.certs):
        for name in cert_names(cert):
            if name.startswith("*."):
                wildcard.setdefault(name[2:], ctx)
            else:
                exact.setdefault(name, ctx)

    def choose(sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        if server_name is None:
            return None  # no SNI (an IP-address URL, an old client): the default certificate
        name = server_name.lower().rstrip(".")
        ctx = exact.get(name)
        if ctx is None:
            parent = name.partition(".")[2]
            ctx = wildcard.get(parent) if parent else None
        if ctx is not None and ctx is not sslobj.context:
            sslobj.context = ctx
        return None

    default.sni_callback = choose
    return default


def _context(spec: TLSSpec, cert: str, key: str) -> ssl.SSLContext:
    # Every certificate's context carries the same settings: after the SNI switch OpenSSL takes
    # the certificate and the ALPN choice from the new context.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSION[spec.min_version]
    # Client-initiated renegotiation costs the server a handshake per request for free (a known
    # DoS lever); nginx refuses it too. TLS 1.3 has no renegotiation at all.
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    # An offer without http/1.1 (e.g. only h2) gets no ALPN answer, not a failed handshake:
    # CPython's selector returns SSL_TLSEXT_ERR_NOACK when nothing overlaps.
    ctx.set_alpn_protocols(list(spec.alpn))
    ctx.load_cert_chain(cert, key)
    return ctx


def cert_names(path: str) -> tuple[str, ...]:
    """The DNS names in the (first) certificate's subjectAltName, lower-cased.

    ``ssl._ssl._test_decode_cert`` is CPython's own PEM decoder (what ``ssl.getpeercert`` returns,
    read from a file); it is private but has been stable since Python 3.2, and it spares a
    dependency on ``cryptography``. IP-address entries are left out: SNI never carries one
    (RFC 6066 §3).
    """
    decoded = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
    return tuple(v.lower() for k, v in decoded.get("subjectAltName", ()) if k == "DNS")
