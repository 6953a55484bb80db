"""Sans-IO HTTP/1.1: heads checked and rewritten (message.py), rules matched (rules.py), request
keys computed (keys.py). Values in, values out; no sockets."""
