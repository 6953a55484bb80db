"""Test layout: ``pure/`` never opens a socket (its conftest refuses to), ``sockets/`` runs the
switch and real origins on 127.0.0.1. ``kit.py`` is the one helper module for the latter.
pyproject.toml puts this directory on sys.path, so ``import kit`` works from both."""
