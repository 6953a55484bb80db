"""Moving bytes: backpressure (flow.py), splice(2) jobs (splice.py), the byte tunnel
(tunnel.py), TLS contexts (tls.py) and the deadline clock (clock.py)."""
