"""``python -m bench.platform``: the platform benchmark (``bench/platform_bench.py``).

This file also stands in for the standard library's ``platform`` module: a sibling
benchmark run as a script (``python bench/realtime.py``) has ``bench/`` first on
``sys.path``, and ``uuid`` (imported by Flask, Celery...) does ``import platform``.
"""

import sys

if __name__ == "platform":
    # Imported as the standard library's module: load the real one in its place, which the
    # import statement then returns (it reads sys.modules after this file ran).
    import importlib.util
    import os
    import sysconfig

    _spec = importlib.util.spec_from_file_location(
        "platform", os.path.join(sysconfig.get_path("stdlib"), "platform.py"))
    assert _spec is not None and _spec.loader is not None
    _stdlib = importlib.util.module_from_spec(_spec)
    sys.modules["platform"] = _stdlib
    _spec.loader.exec_module(_stdlib)
elif __name__ == "__main__":
    from bench.platform_bench import main

    main()
