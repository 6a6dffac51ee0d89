"""Celery configuration for K1, loaded by ``k1.celery`` (``app.config_from_object``).

Every value comes from :mod:`k1.settings`, so the environment stays the one source.
"""

from k1.settings import get_settings

_settings = get_settings()

broker_url = _settings.redis_url
result_backend = _settings.redis_url
broker_connection_retry_on_startup = True
# With acks_late an unacknowledged message comes back after the visibility timeout;
# it must exceed the longest task run time and every retry countdown (k1.recovery).
broker_transport_options = {
    "visibility_timeout": _settings.visibility_timeout,
    "health_check_interval": 10,
}
result_backend_transport_options = {"health_check_interval": 10, "retry_policy": {"timeout": 5}}

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
event_serializer = "json"
timezone = "UTC"
enable_utc = True

# A task is acknowledged after it ran, and given back if its worker process dies,
# so a crash never loses it; tasks must therefore be idempotent (see k1.tasks).
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_track_started = True
result_extended = True  # name, args, kwargs stored with the result, for GET /api/tasks/<id>
result_expires = 7 * 24 * 3600  # 7 days

# Flower and the dashboard see every transition.
worker_send_task_events = True
task_send_sent_event = True

imports = ("k1.tasks", "k1.tasks.demo", "k1.scheduling.history", "k1.events.signals",
           "k1.recovery.dlq.tasks", "k1.conductor.tasks", "k1.history.tasks")

# RedBeat, extended by K1 (time zones, catch-up policy, fire accounting; k1.scheduling).
beat_scheduler = "k1.scheduling.beat:K1Scheduler"
redbeat_redis_url = _settings.redis_url
redbeat_redis_options = {"socket_timeout": 5, "socket_connect_timeout": 5}  # never hang beat
redbeat_key_prefix = "k1:redbeat:"
# A small loop makes API changes take effect within a second or two; the lock must
# outlive several loops (docs/scheduling.md explains the trade-off).
beat_max_loop_interval = _settings.beat_max_loop_interval
redbeat_lock_timeout = _settings.beat_lock_timeout

