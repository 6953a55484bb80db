"""The monitor's users file: one ``user:role:hash`` line per person, written by ``l7switch passwd``.

    # l7switch monitor users (l7switch passwd FILE USER [--role admin|viewer])
    alice:admin:scrypt$16384$8$1$<salt, base64>$<hash, base64>
    bob:viewer:scrypt$16384$8$1$...

Passwords are stored as scrypt (RFC 7914) with a random 16-byte salt per user, through the
standard library's ``hashlib.scrypt`` (OpenSSL's); nothing here is hand-rolled crypto. The cost
N=2^14, r=8, p=1 is RFC 7914 §2's interactive-login figure and OWASP's floor for scrypt: ~50 ms
and 16 MiB per check on this machine, which is also a brake on guessing. The parameters are kept
in each line, so raising them later leaves old lines readable.

Roles: ``viewer`` sees, ``admin`` may also act (drain, enable, disable, set weight).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import tempfile
from dataclasses import dataclass

ROLES = ("admin", "viewer")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
#: Longest password accepted: scrypt takes any length, but a 1 MB "password" is an attack on
#: the CPU, not a secret (the monitor refuses larger login bodies before this is reached).
MAX_PASSWORD = 1024
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_LINE = re.compile(r"([^:]*):([^:]*):(.*)")


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    hash: str  # scrypt$N$r$p$salt$hash

    @property
    def admin(self) -> bool:
        return self.role == "admin"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A storable scrypt hash of ``password`` with a fresh random salt."""
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            dklen=HASH_BYTES)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``; the comparison takes the same time either way."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        want = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt, validate=True),
                             n=int(n), r=int(r), p=int(p), maxmem=128 * 1024 * 1024, dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def check_name(name: str) -> str | None:
    """Why ``name`` cannot be a user name, or None."""
    if not _NAME.fullmatch(name):
        return "a user name is 1-64 letters, digits, '_', '.', '@' or '-'"
    return None


def parse_users(text: str, filename: str) -> tuple[dict[str, User], list[str]]:
    """The users in ``text`` and every problem as ``FILE:LINE: message``."""
    users: dict[str, User] = {}
    problems: list[str] = []
    for i, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.fullmatch(line)
        where = f"{filename}:{i}"
        if m is None:
            problems.append(f"{where}: expected user:role:hash (made by l7switch passwd)")
            continue
        name, role, stored = m.groups()
        why = check_name(name)
        if why is not None:
            problems.append(f"{where}: {why}, found {name!r}")
        elif role not in ROLES:
            problems.append(f"{where}: role {role!r} of {name!r}: expected admin or viewer")
        elif not stored.startswith("scrypt$") or stored.count("$") != 5:
            problems.append(f"{where}: the password of {name!r} is not a hash l7switch passwd made")
        elif name in users:
            problems.append(f"{where}: {name!r} again (each user once)")
        else:
            users[name] = User(name, role, stored)
    return users, problems


def load_users(path: str) -> tuple[dict[str, User], list[str]]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return {}, [f"{path}: no such file; make it with: l7switch passwd {path} USER --role admin"]
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [f"{path}: cannot read it: {exc}"]
    return parse_users(text, path)


def set_user(path: str, name: str, role: str, password: str) -> bool:
    """Add ``name`` to the file at ``path`` or change its role and password (the file is made,
    owner-only, if missing, and replaced in one rename so a reader never sees half of it).
    Returns True when the user was new."""
    lines: list[str] = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = ["# l7switch monitor users: user:role:scrypt hash (l7switch passwd FILE USER --role ROLE)"]
    entry = f"{name}:{role}:{hash_password(password)}"
    new = True
    for i, line in enumerate(lines):
        m = _LINE.fullmatch(line.strip())
        if m is not None and m.group(1) == name:
            lines[i] = entry
            new = False
    if new:
        lines.append(entry)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".users-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return new
