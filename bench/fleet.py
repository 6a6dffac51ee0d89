"""Fleet benchmark: the cost of the broker transport's queue counters (k1/broker.py) per
message, publishing and fetching through K1's transport with the counters on and off,
paired runs alternating in one process.

    .venv/bin/python -m bench.fleet [--messages 5000] [--pairs 12]

Starts its own throwaway Redis. Prints the client's CPU time per publish and per fetch
(process time: wall time on a shared machine is mostly other processes' noise) and what
Redis spends on the counters' commands per call (INFO commandstats).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kombu import Connection, Exchange, Producer, Queue  # noqa: E402

from k1 import broker  # noqa: E402
from tests.support import RedisServer, free_port  # noqa: E402

_COUNTED = broker._counted  # the transport's own: a queue's name, "" for one not counted
QUEUE = Queue("bench-fleet", Exchange("bench-fleet", type="direct"), routing_key="bench-fleet")


def run(url: str, messages: int, counted: bool) -> tuple[float, float]:
    """CPU microseconds per publish and per fetch, counters on or off."""
    broker._counted = _COUNTED if counted else (lambda queue: "")  # off: nothing counted
    with Connection(url, transport=broker.Transport) as connection:
        channel = connection.channel()
        channel.client.delete(*broker.queue_lists(QUEUE.name))
        producer = Producer(channel, exchange=QUEUE.exchange, routing_key=QUEUE.routing_key)
        producer.publish({}, declare=[QUEUE], serializer="json")
        started = time.process_time()
        for _ in range(messages):
            producer.publish({"a": 1}, serializer="json")
        publish = (time.process_time() - started) / messages
        started, fetched = time.process_time(), 0
        while channel._fetch([QUEUE.name]) is not None:
            fetched += 1
        fetch = (time.process_time() - started) / fetched
    return publish * 1e6, fetch * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--pairs", type=int, default=12)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="k1-bench-fleet-") as tmp:
        base = Path(tmp)
        (base / "logs").mkdir()
        server = RedisServer(free_port(), base / "redis", base / "logs").start()
        try:
            runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
            for _ in range(options.pairs):
                for counted in (True, False):
                    runs[counted].append(run(server.url, options.messages, counted))
            stats = server.client().info("commandstats")
        finally:
            server.process.stop()
    for index, what in enumerate(("publish", "fetch")):
        ratios = [on[index] / off[index] for on, off in zip(runs[True], runs[False], strict=True)]
        print(f"{what}: {statistics.median(r[index] for r in runs[True]):.1f} us CPU with "
              f"counters, {statistics.median(r[index] for r in runs[False]):.1f} without; "
              f"paired ratio median {statistics.median(ratios):.3f}")
    for command in ("hincrby", "expire", "lpush", "evalsha"):
        figures = stats.get(f"cmdstat_{command}", {})
        print(f"redis {command}: {figures.get('usec_per_call', 'n/a')} us per call")


if __name__ == "__main__":
    main()
