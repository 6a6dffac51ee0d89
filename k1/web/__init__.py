"""The web process: REST API, Socket.IO relay and dashboard.

Kept import-free so that ``python -m k1.web`` can monkey-patch before anything else;
the app factory is :func:`k1.web.app.create_app`.
"""
