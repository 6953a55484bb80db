"""``python -m l7switch`` is the ``l7switch`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
