"""A tiny stand-in for outside APIs: ``k1 external-service --port 8090``.

It answers ``POST /analyze`` like a profile-analysis service would, and can be told
to misbehave through ``POST /_control``::

    {"mode": "fail", "status": 503}           # every request fails with 503
    {"mode": "fail", "status": 429, "retry_after": 2}
    {"mode": "slow", "delay_ms": 1500}        # answers, slowly
    {"mode": "fail", "status": 500, "count": 3}   # the next 3 requests fail, then ok
    {"mode": "ok"}                            # recover

``GET /_control`` returns the mode and counters (requests, failures, analyses, replays).

Like a payment API, it honours an ``Idempotency-Key`` header: the first successful
answer for a key is kept, and a repeat of the key is answered from it (with
``Idempotent-Replayed: true``) without analysing again, so ``analyses`` counts the
effects and ``replays`` the duplicates it absorbed. Failures are not kept: the same key
may try again. ``GET /_control/keys/<key>`` says how many times a key was analysed (0/1)
and replayed.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import asdict, dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODES = ("ok", "fail", "slow")
KEYS_PATH = "/_control/keys/"


@dataclass
class Behaviour:
    mode: str = "ok"
    status: int = 503
    delay_ms: int = 0
    retry_after: int | None = None
    count: int | None = None  # failures left before recovering by itself; None = until told
    requests: int = 0
    failures: int = 0
    analyses: int = 0  # answers actually computed (requests without a kept answer)
    replays: int = 0  # requests answered from the answer kept for their Idempotency-Key


class ExternalService(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.behaviour = Behaviour()
        self.lock = threading.Lock()
        self.answers: dict[str, dict[str, Any]] = {}  # Idempotency-Key -> kept answer
        self.replays: dict[str, int] = {}  # Idempotency-Key -> times answered from it


class _Handler(BaseHTTPRequestHandler):
    server: ExternalService

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, {"status": "ok"})
        elif self.path == "/_control":
            with self.server.lock:
                self._send(200, asdict(self.server.behaviour))
        elif self.path.startswith(KEYS_PATH):
            key = self.path[len(KEYS_PATH):]
            with self.server.lock:
                self._send(200, {"key": key, "analysed": int(key in self.server.answers),
                                 "replays": self.server.replays.get(key, 0)})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = self._body()
        if body is None:
            self._send(400, {"error": "body must be a JSON object"})
        elif self.path == "/_control":
            self._control(body)
        elif self.path == "/analyze":
            self._analyze(body)
        else:
            self._send(404, {"error": "not found"})

    def _control(self, body: dict[str, Any]) -> None:
        mode = body.get("mode", "ok")
        if mode not in MODES:
            self._send(400, {"error": f"mode must be one of {', '.join(MODES)}"})
            return
        with self.server.lock:
            b = self.server.behaviour
            b.mode, b.status = mode, int(body.get("status", 503))
            b.delay_ms, b.retry_after = int(body.get("delay_ms", 0)), body.get("retry_after")
            b.count = body.get("count")
            if body.get("reset_counters"):
                b.requests = b.failures = b.analyses = b.replays = 0
            self._send(200, asdict(b))

    def _analyze(self, body: dict[str, Any]) -> None:
        key = self.headers.get("Idempotency-Key")
        with self.server.lock:
            b = self.server.behaviour
            b.requests += 1
            replayed = self.server.answers.get(key) if key else None
            if key and replayed is not None:  # answered from the record, however it behaves
                self._count_replay(key)
            failing = replayed is None and b.mode == "fail" and (b.count is None or b.count > 0)
            if failing:
                b.failures += 1
                if b.count is not None:
                    b.count -= 1
                    if b.count == 0:
                        b.mode, b.count = "ok", None
            status, retry_after, delay_ms = b.status, b.retry_after, b.delay_ms
            slow = b.mode == "slow"
        if replayed is not None:
            self._send(200, replayed, {"Idempotent-Replayed": "true"})
            return
        if slow:
            time.sleep(delay_ms / 1000)
        if failing:
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            self._send(status, {"error": HTTPStatus(status).phrase}, headers)
            return
        path = str(body.get("data_path", ""))
        digest = hashlib.sha256(path.encode()).hexdigest()
        answer = {
            "project_id": body.get("project_id"),
            "data_path": path,
            "profile": {"fingerprint": digest[:16], "score": int(digest[:4], 16) % 100},
        }
        with self.server.lock:
            kept = self.server.answers.setdefault(key, answer) if key else answer
            if key and kept is not answer:  # a concurrent request with this key won
                self._count_replay(key)
            else:
                self.server.behaviour.analyses += 1
        self._send(200, kept)

    def _count_replay(self, key: str) -> None:
        self.server.behaviour.replays += 1
        self.server.replays[key] = self.server.replays.get(key, 0) + 1

    def _body(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def serve(host: str, port: int) -> None:
    server = ExternalService((host, port))
    print(f"k1 external-service: listening on http://{host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
