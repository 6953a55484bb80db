"""Choosing a real server: servers and their counters (servers.py), pools (pool.py) built from
specs (build.py), schedulers (schedulers/), persistence and its tables (persistence.py, store.py),
and the redispatch decision (dispatch.py). Pure: no sockets."""
