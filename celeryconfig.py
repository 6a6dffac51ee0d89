"""Celery configuration for K1, loaded by ``k1.celery`` (``app.config_from_object``).

Every value comes from :mod:`k1.settings`, so the environment stays the one source.
"""

from kombu import Queue

from k1.settings import get_settings

_settings = get_settings()

broker_url = _settings.redis_url
broker_transport = "k1.broker:Transport"  # kombu's Redis transport, mended (k1/broker.py)
result_backend = _settings.redis_url
broker_connection_retry_on_startup = True
# With acks_late an unacknowledged message comes back after the visibility timeout;
# it must exceed the longest task run time and every retry countdown (k1.recovery).
broker_transport_options = {
    "visibility_timeout": _settings.visibility_timeout,
    "health_check_interval": 10,
    # Queues whose messages take turns between projects (k1.broker, docs/flow.md).
    "fair_queues": list(_settings.fair_queues),
}
result_backend_transport_options = {"health_check_interval": 10, "retry_policy": {"timeout": 5}}
# A Redis restart must not turn a running task into a FAILURE: a result write (STARTED,
# SUCCESS...) that meets a lost connection is retried with backoff for about half a minute
# instead of failing the task "outside its body" (tests/fault/test_redis.py).
result_backend_always_retry = True
result_backend_max_retries = 30
result_backend_base_sleep_between_retries_ms = 100
result_backend_max_sleep_between_retries_ms = 2000

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
event_serializer = "json"
timezone = "UTC"
enable_utc = True

# A task is acknowledged after it ran, and given back if its worker process dies,
# so a crash never loses it; a task may thus run twice and does its side effects
# once per idempotency key (k1.tasks.effects).
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_track_started = True
result_extended = True  # name, args, kwargs stored with the result, for GET /api/tasks/<id>
result_expires = 7 * 24 * 3600  # 7 days

# Stopping (a deploy, a daily restart): the Procfile sets REMAP_SIGTERM=SIGQUIT, so that
# SIGTERM to the worker's whole process group leaves the pool children running (billiard
# ignores SIGTERM in them) and starts Celery's soft shutdown in the main process: running
# tasks get this long to finish, then the unfinished are cancelled and, being unacked,
# handed back to the queue before the worker exits (not left for the visibility timeout).
worker_soft_shutdown_timeout = _settings.worker_shutdown_grace

# No run is unbounded. At the soft limit the task gets SoftTimeLimitExceeded, a
# non-retryable death with a dead letter (k1.recovery.errors says why); the hard limit,
# later, kills a process that ignored it (the letter is still written). A task sets its
# own with Celery's options: @app.task(soft_time_limit=..., time_limit=...), or per call
# in apply_async. Both stay far below the visibility timeout, past which a running task
# would be delivered again.
DEFAULT_SOFT_TIME_LIMIT = 300  # 5 min: K1's tasks call services with 30 s timeouts
DEFAULT_HARD_TIME_LIMIT = DEFAULT_SOFT_TIME_LIMIT + 60  # a minute to clean up after the soft
task_soft_time_limit = DEFAULT_SOFT_TIME_LIMIT
task_time_limit = DEFAULT_HARD_TIME_LIMIT

# Celery's own task events are for Flower (the dashboard's come from K1's signal handlers,
# k1.events.signals). They cost 0.6-0.9 ms of worker and Redis CPU per task, a fifth of a
# no-op task's durable cost (bench/platform.py), and Flower can turn them on by itself
# (its periodic enable_events broadcast). They stay on from the start all the same: with
# them off, a task that ran before Flower's broadcast reached a worker was missing from
# Flower (tests/test_flower.py, under load), and "Flower sees every task" is the contract.
worker_send_task_events = True
task_send_sent_event = True

# K1's own work gets its own queue, so that it never waits behind a backlog of users'
# tasks: a worker started without --queues consumes both, in turn (kombu rotates them, so
# a platform task waits for at most one user task per free slot; docs/flow.md). A retry
# stays on its queue.
PLATFORM_QUEUE = "k1.platform"
task_queues = (Queue("celery"), Queue(PLATFORM_QUEUE))
task_routes = {
    "k1.dlq.*": {"queue": PLATFORM_QUEUE},  # spool drain, retention, depth snapshots
    "k1.history.*": {"queue": PLATFORM_QUEUE},
    "k1.conductor.report_outcome": {"queue": PLATFORM_QUEUE},  # a workflow waits for it
    "k1.flow.*": {"queue": PLATFORM_QUEUE},
}

imports = ("k1.tasks.analysis", "k1.tasks.demo", "k1.scheduling.history", "k1.events.signals",
           "k1.recovery.dlq.tasks", "k1.conductor.tasks", "k1.flow.queues", "k1.history.tasks",
           "k1.flow.fleet")

# RedBeat, extended by K1 (time zones, catch-up policy, fire accounting; k1.scheduling).
beat_scheduler = "k1.scheduling.beat:K1Scheduler"
redbeat_redis_url = _settings.redis_url
redbeat_redis_options = {"socket_timeout": 5, "socket_connect_timeout": 5}  # never hang beat
redbeat_key_prefix = "k1:redbeat:"
# A small loop makes API changes take effect within a second or two; the lock must
# outlive several loops (docs/scheduling.md explains the trade-off).
beat_max_loop_interval = _settings.beat_max_loop_interval
redbeat_lock_timeout = _settings.beat_lock_timeout

