"""Self-protection decisions, pure: who may connect and how fast a client may send requests
(clients.py). The proxy and passthrough connections consult it; no I/O here."""
