"""``k1 beat``: run ``celery beat`` and start it again whenever it exits.

A RedBeat beat that loses its lock (stalled longer than ``K1_BEAT_LOCK_TIMEOUT``, Redis
failover...) raises ``LockNotOwnedError`` and exits (redbeat #218, #230), and honcho
stops every Procfile process when one exits. So the Procfile runs this supervisor, which
outlives its child: the restarted beat waits for the lock like any standby beat.

    k1 beat                    # what the Procfile runs
    k1 beat -- --pidfile=      # extra arguments go to celery beat

SIGTERM/SIGINT stop it: the child gets the signal too (same process group; forwarded
after :data:`FORWARD_AFTER` if it did not), releases the lock and exits.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

RESTART_DELAY = 1.0  # s before the first restart; doubles while the child keeps failing
MAX_RESTART_DELAY = 30.0  # s; a beat that cannot start (bad config) retries this often
STABLE_AFTER = 60.0  # s; a child that ran this long resets the restart delay
FORWARD_AFTER = 1.0  # s; a stop signal the child did not get itself is then passed on
POLL = 0.2  # s between looks at the child


def beat_argv(extra: Sequence[str] = (), log_level: str = "INFO") -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "k1.celery", "beat", "--loglevel", log_level,
            *extra]


def supervise(argv: Sequence[str]) -> int:
    """Run ``argv`` until a stop signal, restarting it when it exits; returns 0 on stop."""
    stop_requested_at: float | None = None

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stop_requested_at
        stop_requested_at = stop_requested_at or time.monotonic()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    delay = RESTART_DELAY
    while stop_requested_at is None:
        started = time.monotonic()
        child = subprocess.Popen(list(argv))
        _say(f"started celery beat (pid {child.pid})")
        forwarded = False
        while child.poll() is None:
            time.sleep(POLL)
            if (stop_requested_at is not None and not forwarded
                    and time.monotonic() - stop_requested_at > FORWARD_AFTER):
                child.terminate()
                forwarded = True
        if stop_requested_at is not None:
            break
        if time.monotonic() - started >= STABLE_AFTER:
            delay = RESTART_DELAY
        _say(f"celery beat exited with {child.returncode}; restarting in {delay:.0f}s")
        deadline = time.monotonic() + delay
        while stop_requested_at is None and time.monotonic() < deadline:
            time.sleep(POLL)
        delay = min(delay * 2, MAX_RESTART_DELAY)
    _say("stopped")
    return 0


def _say(message: str) -> None:
    print(f"k1 beat: {message}", file=sys.stderr, flush=True)
