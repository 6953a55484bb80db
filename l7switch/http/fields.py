"""A response head's lines as the server sent them, sans-IO: cut, searched, filtered, edited.

proxy/upstream.py lets llhttp check a response head (token names, CRLF endings, no obs-fold,
RFC 9112 §5) without a call-back per field, then cuts the head's *lines* out of the bytes it
was fed (cut_head): the status line first, then each field line, without their CRLF. Field
lines are forwarded as they came — the server's spelling of a name is kept, as HAProxy keeps
it on HTTP/1.1 — and only the fields the switch acts on are looked at (framing.relay_fields).

The other functions here serve the uncommon paths (a 1xx or 101 head, a Connection field
listing more fields, a persistence mode that reads or edits fields).
"""

from __future__ import annotations

from collections.abc import Callable

from .message import ASCII_LOWER, hop_by_hop


def cut_head(buf: bytes, at: int, most: int) -> tuple[list[bytes], int]:
    """The lines of the head starting at ``at`` in ``buf`` (llhttp has accepted all of it) —
    the status line, then the field lines — and where the bytes after it start. ValueError if
    there are more than ``most`` fields.

    One ``find`` for the empty line, then one ``split`` of the head alone: the lines come out
    as bytes objects in C, and a body's own CRLFs are never split."""
    n = len(buf)
    while at < n and (buf[at] == 13 or buf[at] == 10):
        at += 1  # llhttp skips empty lines before a status line
    end = buf.find(b"\r\n\r\n", at)
    lines = buf[at:end].split(b"\r\n")
    if len(lines) > most + 1:
        raise ValueError(f"more than {most} response header fields")
    return lines, end + 4


def split_fields(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """(lower-case name, value) for each field line: the value without the whitespace after
    the colon, its trailing whitespace kept (what llhttp's on_header_value gives)."""
    out = []
    for i in range(1, len(lines)):
        name, _, value = lines[i].partition(b":")
        out.append((name.translate(ASCII_LOWER), value.lstrip(b" \t")))
    return out


def lines_hop_by_hop(lines: list[bytes]) -> frozenset[bytes]:
    """message.hop_by_hop for a head's lines: HOP_BY_HOP plus what Connection fields name."""
    return hop_by_hop(split_fields(lines))


def field_lines(lines: list[bytes], drop: frozenset[bytes]) -> list[bytes]:
    """The field lines whose name is not in ``drop`` (lower case) as pieces of a head to join,
    index 0 left free for the status line (message.relay_head puts it there)."""
    out = [b""]
    for i in range(1, len(lines)):
        line = lines[i]
        if line.partition(b":")[0].translate(ASCII_LOWER) not in drop:
            out.append(line)
            out.append(b"\r\n")
    return out


def is_named(line: bytes, name: bytes) -> bool:
    """Whether field line ``line`` is a ``name`` (lower case) field, whatever its case: the name
    is only cut out and lower-cased where a colon stands right after ``len(name)`` bytes (no
    method call on a line that cannot be one)."""
    k = len(name)
    return len(line) > k and line[k] == 58 and line[:k].translate(ASCII_LOWER) == name


def has_field(lines: list[bytes], name: bytes) -> bool:
    """Whether there is a field ``name`` (lower case), whatever its case in the head (a line
    whose first byte differs is not looked at further)."""
    first = name[0]
    for i in range(1, len(lines)):
        line = lines[i]
        if ASCII_LOWER[line[0]] == first and is_named(line, name):
            return True
    return False


def edit_values(lines: list[bytes], name: bytes, edit: Callable[[bytes], bytes | None]) -> list[bytes]:
    """The lines with each ``name`` (lower case) field's value replaced by ``edit(value)``
    where that is not None — a new list; ``lines`` itself when nothing changed. The line keeps
    the server's spelling of the name."""
    out = lines
    for i in range(1, len(lines)):
        raw, _, value = lines[i].partition(b":")
        if raw.translate(ASCII_LOWER) == name:
            new = edit(value.lstrip(b" \t"))
            if new is not None:
                if out is lines:
                    out = list(lines)
                out[i] = raw + b": " + new
    return out
