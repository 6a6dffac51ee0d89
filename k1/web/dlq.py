"""The dead-letter queue over HTTP: stats, list, show, replay (one or by filter), discard,
and the quarantine (letters the database refused even repaired).

A token sees the letters of its projects; an operator token (project ``*``) sees all.
Another project's letter answers 404, like one that does not exist.
"""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint, jsonify
from pydantic import BaseModel, ConfigDict, Field

from k1.recovery.dlq.filters import (
    ANY_STATUS,
    FIELDS,
    MAX_ID,
    MAX_LIMIT,
    FilterError,
    LetterFilter,
    parse_limit,
)
from k1.recovery.dlq.models import STATUSES
from k1.recovery.dlq.store import (
    DeadLetterStore,
    Edit,
    EditInvalid,
    EditNotAllowed,
    LetterNotFound,
    ReplayRefused,
    letter_as_dict,
)
from k1.web.auth import authorize_project, current_principal, require_auth
from k1.web.contract import Body, Error, Query, responses, validate
from k1.web.errors import Answer, APIError, error_response
from k1.web.offload import blocking

bp = Blueprint("dlq", __name__)
store = DeadLetterStore()

LETTER = "/api/dlq/<int:letter_id>"
Status = Literal[(*STATUSES, ANY_STATUS)]  # type: ignore[valid-type]  # built from STATUSES


class Filters(BaseModel):
    """Which letters: every field optional; dates are ISO-8601 (UTC unless an offset)."""

    task: str | None = None
    exception: str | None = None
    project_id: str | None = None
    since: str | None = None
    until: str | None = None
    status: Status | None = Field(None, description="default: dead; 'all' for every status")


class LetterQuery(Query, Filters):
    # Unknown parameters reach LetterFilter.parse, which names them with the known ones;
    # it checks the limit's bounds too (the CLI shares it).
    model_config = ConfigDict(extra="allow")

    limit: int | None = Field(None, json_schema_extra={"minimum": 1, "maximum": MAX_LIMIT})
    cursor: str | None = Field(None, max_length=200)


class QuarantineQuery(Query):
    limit: int | None = Field(None, json_schema_extra={"minimum": 1, "maximum": MAX_LIMIT})


class Quarantined(BaseModel):
    id: int
    quarantined_at: str | None
    reason: str
    project_id: str | None
    task_id: str | None
    task_name: str | None
    payload: Any


class QuarantinePage(BaseModel):
    items: list[Quarantined]


class ReplayOne(Body):
    force: bool = False
    args: list[Any] | None = Field(
        None, description="replay with these positional arguments instead of the letter's "
                          "(checked like a new submission; omitted or null: the letter's)")
    kwargs: dict[str, Any] | None = Field(
        None, description="replay with these keyword arguments instead of the letter's "
                          "(checked like a new submission; omitted or null: the letter's)")


class ReplayMatching(Body, Filters):
    force: bool = False
    all: bool = Field(False, description="replay every dead letter the token may see")


class Stats(BaseModel):
    depth: int
    by_task: dict[str, int]
    by_exception: dict[str, int]
    oldest_at: str | None
    daily_avg_depth: float | None


class Letter(BaseModel):
    id: int
    task_id: str
    task_name: str
    status: str


class LetterPage(BaseModel):
    items: list[Letter]
    next_cursor: str | None


class Replayed(BaseModel):
    id: int
    status: str
    replay_task_id: str | None
    replay_count: int
    edited: list[str] = Field(description="the arguments the replay changed: [], "
                                          "['args'], ['kwargs'] or both")


class ReplayedMatching(BaseModel):
    replayed: int
    task_ids: list[str]


class Discarded(BaseModel):
    id: int
    status: str


@bp.errorhandler(LetterNotFound)
def _not_found(exc: LetterNotFound) -> Answer:
    return error_response(APIError(404, "dead letter not found",
                                   detail=exc.args[0] if exc.args else None))


@bp.errorhandler(ReplayRefused)
def _refused(exc: ReplayRefused) -> Answer:
    return error_response(APIError(409, str(exc)))


@bp.errorhandler(EditInvalid)
def _bad_edit(exc: EditInvalid) -> Answer:
    return error_response(APIError(400, str(exc),
                                   detail={"field": exc.field, "problem": exc.problem}))


@bp.errorhandler(EditNotAllowed)
def _edit_not_allowed(exc: EditNotAllowed) -> Answer:
    return error_response(APIError(403, str(exc)))


@bp.errorhandler(FilterError)
def _bad_filter(exc: FilterError) -> Answer:
    return error_response(APIError(400, str(exc)))


@bp.url_value_preprocessor
def _existing_id(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    """An id past BIGINT names no letter: 404 before the database sees (and refuses) it."""
    if values and values.get("letter_id", 0) > MAX_ID:
        raise LetterNotFound(values["letter_id"])


def _scope() -> frozenset[str] | None:
    principal = current_principal()
    return None if principal.is_operator else principal.projects


def _filters(params: dict[str, Any], extra: tuple[str, ...] = ()) -> LetterFilter:
    filters = LetterFilter.parse(params, extra=extra)
    if filters.project_id:
        authorize_project(filters.project_id)
    return filters.scoped(_scope())


@bp.get("/api/dlq/stats")
@require_auth
@validate(tags=("dlq",), resp=responses(HTTP_200=Stats))
def stats() -> Answer:
    return jsonify(blocking(store.stats, _scope()))


@bp.get("/api/dlq/quarantine")
@require_auth
@validate(query=QuarantineQuery, tags=("dlq",), resp=responses(HTTP_200=QuarantinePage))
def quarantined(query: QuarantineQuery) -> Answer:
    """Letters the database refused even once made storable, with the reason."""
    items = blocking(store.quarantined, _scope(), limit=parse_limit(query.limit))
    return jsonify(items=items)


@bp.get("/api/dlq")
@require_auth
@validate(query=LetterQuery, tags=("dlq",), resp=responses(HTTP_200=LetterPage, HTTP_403=Error))
def list_letters(query: LetterQuery) -> Answer:
    filters = _filters(query.model_dump(exclude_none=True, exclude={"limit", "cursor"}),
                       extra=("limit", "cursor"))
    page, next_cursor = blocking(store.query, filters, limit=parse_limit(query.limit),
                                 cursor=query.cursor)
    return jsonify(items=[letter_as_dict(letter, full=False) for letter in page],
                   next_cursor=next_cursor)


@bp.get(LETTER)
@require_auth
@validate(tags=("dlq",), resp=responses(HTTP_200=Letter, HTTP_404=Error))
def show(letter_id: int) -> Answer:
    return jsonify(letter_as_dict(blocking(store.get, letter_id, _scope())))


@bp.post(f"{LETTER}/replay")
@require_auth
@validate(json=ReplayOne, body_required=False, tags=("dlq",),
          resp=responses(HTTP_200=Replayed, HTTP_403=Error, HTTP_404=Error, HTTP_409=Error))
def replay(letter_id: int, json: ReplayOne) -> Answer:
    """Send the letter's task again. With ``args`` and/or ``kwargs``, an edited replay:
    the arguments are checked like a new submission by this token (a task it may start,
    arguments that fit: else 403, 400 naming the field) and history records the task as
    an edited replay of the letter."""
    principal = current_principal()
    edit = Edit(json.args, json.kwargs, principal.user_id, principal.is_operator)
    # The database steps in eventlet's pool, the send here, on the hub (see replay.py).
    letter = store.replay(letter_id, force=json.force, scope=_scope(), edit=edit,
                          offload=blocking)
    return jsonify(id=letter.id, status=letter.status, replay_task_id=letter.replay_task_id,
                   replay_count=letter.replay_count, edited=list(edit.fields))


@bp.post("/api/dlq/replay")
@require_auth
@validate(json=ReplayMatching, tags=("dlq",),
          resp=responses(HTTP_200=ReplayedMatching, HTTP_403=Error))
def replay_matching(json: ReplayMatching) -> Answer:
    criteria = json.model_dump(exclude_none=True, exclude={"force", "all"})
    if not criteria and not json.all:
        raise APIError(400, "give at least one filter, or \"all\": true to replay every "
                            "dead letter", detail={"filters": list(FIELDS)})
    task_ids = store.replay_matching(_filters(criteria), force=json.force, offload=blocking)
    return jsonify(replayed=len(task_ids), task_ids=task_ids)


@bp.delete(LETTER)
@require_auth
@validate(tags=("dlq",), resp=responses(HTTP_200=Discarded, HTTP_404=Error))
def discard(letter_id: int) -> Answer:
    letter = blocking(store.discard, letter_id, scope=_scope())
    return jsonify(id=letter.id, status=letter.status)
