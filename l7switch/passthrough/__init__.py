"""tls-passthrough listeners: the ClientHello read (tlshello.py), routed by SNI (sni.py), and the
connection that tunnels the TLS bytes to a server (connection.py)."""
