"""``python -m bench.web_before``: K1's web process as it was before
``k1.celery.serve_requests`` (Celery's result backend per green thread, with the workers'
retry loop), the baseline of ``bench/platform.py``'s task reads."""

import warnings

warnings.filterwarnings("ignore", message="\nEventlet is deprecated")  # as k1.web does
import eventlet  # noqa: E402

eventlet.monkey_patch()  # before anything imports socket (see k1/web/__main__.py)

import runpy  # noqa: E402

import k1.celery  # noqa: E402

k1.celery.serve_requests = lambda: None
runpy.run_module("k1.web.__main__", run_name="__main__")
