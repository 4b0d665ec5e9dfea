"""The web dashboard: static files served by every manager at /dashboard (shoal/api/dashboard.py)
and `shoal dashboard`, a local read-only proxy to a node's API for a browser (proxy.py)."""
