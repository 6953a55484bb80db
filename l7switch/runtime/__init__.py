"""The switch as a running process: lifecycle (switch.py); later reload and workers."""
