"""Test layout: ``pure/`` never opens a socket (its conftest refuses to), ``sockets/`` runs the
switch and real origins on 127.0.0.1. ``kit.py`` is the one helper module for the latter.
pyproject.toml puts this directory on sys.path, so ``import kit`` works from both."""

from __future__ import annotations

import pytest
import trustme


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a default certificate for localhost/127.0.0.1 and a second for other names, written
    to a temporary directory (TLS config tests in pure/, HTTPS tests in sockets/)."""
    ca = trustme.CA()
    d = tmp_path_factory.mktemp("pki")
    for stem, names in (("site", ("localhost", "127.0.0.1")), ("other", ("other.test", "*.wild.test"))):
        cert = ca.issue_cert(*names)
        cert.cert_chain_pems[0].write_to_path(str(d / f"{stem}.pem"))
        cert.private_key_pem.write_to_path(str(d / f"{stem}.key"))
    return ca, d
