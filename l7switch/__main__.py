"""``python -m l7switch`` is the ``l7switch`` command."""

from .cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
