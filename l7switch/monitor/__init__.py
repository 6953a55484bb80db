"""What operators look at: the browser monitor (app.py) and Prometheus metrics (metrics.py), both
fed by the ``internal stats`` admin command and acting through the admin commands, and
``Observers``, which starts, reloads and stops them for a switch or a master."""

from __future__ import annotations

from .serve import Observers

__all__ = ["Observers"]
