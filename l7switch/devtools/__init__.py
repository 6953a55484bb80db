"""Not on the serving path: the origin server used by tests, the demo and load tests
(origin.py), and ``l7switch demo`` (demo.py)."""
