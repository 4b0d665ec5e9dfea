"""The Docker executor (docker-py is imported only in this package)."""
