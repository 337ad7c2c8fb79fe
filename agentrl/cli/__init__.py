"""The `agentrl` command line. Each command group lives in its own module and is registered in `main.py`."""
