"""A response's field block as the server sent it, sans-IO: split, searched, filtered, edited.

proxy/upstream.py lets llhttp check a response head (token names, CRLF endings, no obs-fold,
RFC 9112 §5) without a call-back per field, then cuts the *field block* out of the bytes it
was fed: every field line after the status line, each ending in CRLF, up to (not including)
the empty line; ``b""`` when there are none. Lines are forwarded as they came — the server's
spelling of a name is kept, as HAProxy keeps it on HTTP/1.1 — and only the fields the switch
acts on are ever cut out and lower-cased (framing.relay_fields).

The functions here are the uncommon paths over a block (a 1xx or 101 head, a Connection field
listing more fields, a persistence mode that edits Set-Cookie); each splits it into lines.
"""

from __future__ import annotations

from collections.abc import Callable

from .message import ASCII_LOWER, HOP_BY_HOP, PLAIN_CONNECTION, connection_tokens


def split_fields(block: bytes) -> list[tuple[bytes, bytes]]:
    """(lower-case name, value) for each line: the value without the whitespace after the
    colon, its trailing whitespace kept (what llhttp's on_header_value gives)."""
    out = []
    for line in block.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            out.append((name.translate(ASCII_LOWER), value.lstrip(b" \t")))
    return out


def block_hop_by_hop(block: bytes) -> frozenset[bytes]:
    """message.hop_by_hop for a block: HOP_BY_HOP plus what its Connection fields name."""
    fields = split_fields(block)
    for name, value in fields:
        if name == b"connection" and value not in PLAIN_CONNECTION:
            return HOP_BY_HOP | connection_tokens(fields)
    return HOP_BY_HOP


def field_lines(block: bytes, drop: frozenset[bytes]) -> list[bytes]:
    """The lines whose name is not in ``drop`` (lower case) as pieces of a head to join, index
    0 left free for the status line (message.relay_head puts it there)."""
    out = [b""]
    for line in block.split(b"\r\n"):
        if line and line.partition(b":")[0].translate(ASCII_LOWER) not in drop:
            out.append(line + b"\r\n")
    return out


def has_field(block: bytes, name: bytes) -> bool:
    """Whether a field ``name`` (lower case) is in the block, whatever its case there."""
    low = block.translate(ASCII_LOWER)
    needle = name + b":"
    return low.startswith(needle) or low.find(b"\r\n" + needle) >= 0


def edit_values(block: bytes, name: bytes, edit: Callable[[bytes], bytes | None]) -> bytes:
    """The block with each ``name`` (lower case) field's value replaced by ``edit(value)``
    where that is not None; ``block`` itself when nothing changed. The line keeps the server's
    spelling of the name."""
    lines = block.split(b"\r\n")
    changed = False
    for i, line in enumerate(lines):
        raw, colon, value = line.partition(b":")
        if colon and raw.translate(ASCII_LOWER) == name:
            new = edit(value.lstrip(b" \t"))
            if new is not None:
                lines[i] = raw + b": " + new
                changed = True
    return b"\r\n".join(lines) if changed else block
