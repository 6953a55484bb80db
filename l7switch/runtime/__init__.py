"""The switch as a running process: lifecycle (switch.py), listeners (listeners.py), hot reload
(reload.py), the runtime admin and its socket (admin.py), and the master/worker model
(workers.py)."""
