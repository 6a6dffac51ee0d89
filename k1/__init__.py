"""K1: a Celery task platform where failed work is never lost and everything is watched.

Kept import-free on purpose: ``python -m k1.web`` must monkey-patch with eventlet
before anything imports socket or threading.
"""
