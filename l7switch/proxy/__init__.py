"""HTTP through the switch: client connections (frontend.py), one exchange per request
(exchange.py), server connections and their keep-alive pools (upstream.py), the state they share
(state.py) and the base classes that keep calls pointing down (ports.py)."""
