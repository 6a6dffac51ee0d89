"""Socket.IO: authenticated connections, per-project and per-user rooms.

A client connects with ``auth={"token": ...}``; it joins ``user_<id>`` and
``platform`` (platform-wide events such as breaker states) at once, and
``project_<id>`` on ``subscribe {"project_id": ...}`` for a project its token grants.
Refusals are answered with an ``error`` event, never ignored.
"""

from __future__ import annotations

from typing import Any

from flask import current_app, request
from flask_socketio import SocketIO, join_room, leave_room
from flask_socketio import emit as reply

from k1.auth import InvalidToken, Principal, verify_token
from k1.events import PLATFORM_ROOM, project_room, user_room

_principals: dict[str, Principal] = {}  # by Socket.IO sid, for this process's connections


def register(socketio: SocketIO) -> None:
    @socketio.on("connect")
    def connect(auth: Any = None) -> bool:
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            principal = verify_token(
                token, secret=current_app.config["K1_SETTINGS"].secret_key
            )
        except InvalidToken as exc:
            current_app.logger.info("socket connect refused: %s", exc)
            return False
        _principals[request.sid] = principal
        join_room(user_room(principal.user_id))
        join_room(PLATFORM_ROOM)
        return True

    @socketio.on("disconnect")
    def disconnect(*_: Any) -> None:
        _principals.pop(request.sid, None)

    @socketio.on("subscribe")
    def subscribe(data: Any) -> dict[str, Any]:
        return _change_room(data, join=True)

    @socketio.on("unsubscribe")
    def unsubscribe(data: Any) -> dict[str, Any]:
        return _change_room(data, join=False)


def _change_room(data: Any, *, join: bool) -> dict[str, Any]:
    action = "subscribe" if join else "unsubscribe"
    principal = _principals.get(request.sid)
    project_id = data.get("project_id") if isinstance(data, dict) else None
    if principal is None:
        return _refuse(action, "not authenticated", project_id)
    if not isinstance(project_id, str | int) or isinstance(project_id, bool) or project_id == "":
        return _refuse(action, "project_id: required, a string", None)
    project_id = str(project_id)
    if not principal.can_see(project_id):
        return _refuse(action, f"token does not grant project {project_id!r}", project_id)
    (join_room if join else leave_room)(project_room(project_id))
    return {"ok": True, "action": action, "project_id": project_id}


def _refuse(action: str, error: str, project_id: Any) -> dict[str, Any]:
    answer = {"ok": False, "action": action, "error": error, "project_id": project_id}
    reply("error", answer)
    return answer
