"""``k1 history-recorder``: task history from the Redis Stream into the database."""

from __future__ import annotations

import signal
from typing import Any

import click

from k1.history.recorder import BATCH, CLAIM_IDLE


@click.command("history-recorder")
@click.option("--batch", type=click.IntRange(min=1), default=BATCH, show_default=True,
              help="Records per read and per transaction.")
@click.option("--claim-idle", type=click.FloatRange(min=0.1), default=CLAIM_IDLE,
              show_default=True,
              help="Seconds after which another recorder's unacknowledged records are taken.")
def history_recorder(batch: int, claim_idle: float) -> None:
    """Record task history (Procfile ``recorder``); several may run at once."""
    from k1.connections import get_redis
    from k1.history.recorder import Recorder
    from k1.logs import configure_logging
    from k1.settings import get_settings

    configure_logging(get_settings().log_level)
    recorder = Recorder(get_redis(), batch=batch, claim_idle=claim_idle)

    def stop(_signum: int, _frame: Any) -> None:
        recorder.stop()  # the batch in hand is finished (or left pending), then exit

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    recorder.run()
