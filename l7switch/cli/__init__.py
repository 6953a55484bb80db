"""The ``l7switch`` command (main.py)."""
