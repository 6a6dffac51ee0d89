"""One source of truth for the API: the models that validate requests also describe them.

    @bp.post("/api/things")
    @require_auth
    @api.validate(json=NewThing, resp=responses(HTTP_201=Thing, HTTP_409=Error))
    def create_thing(json: NewThing): ...

:func:`validate` wraps spectree's decorator: the body must be a JSON object (the messages
of :func:`k1.web.errors.json_object`), then the query and the body are checked against
their pydantic models, and a mismatch is a 400 whose ``error`` names every field at fault
(``{"error": "args: must be a JSON list", "detail": {"field": "args", ...}}``).
``GET /api/openapi.json`` is spectree's OpenAPI 3.1 document of every route declared so,
with the error responses each may give. Domain checks (a cron expression parses, a task
exists) stay in the domain code; the models check shapes, types and bounds.

Bodies are parsed by :class:`BoundedJSONProvider`: nesting deeper than
:data:`MAX_JSON_DEPTH`, ``NaN``/``Infinity``, numbers that overflow a float and lone
surrogates are malformed JSON (400), never a ``RecursionError``, an ``inf`` or text that
cannot be encoded reaching the code.
"""

from __future__ import annotations

import functools
import json as std_json
import math
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from flask import Blueprint, Flask, jsonify, request
from flask.json.provider import DefaultJSONProvider
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    StringConstraints,
    ValidationError,
)
from pydantic_core import PydanticCustomError
from spectree import Response, SecurityScheme, SecuritySchemeData, SpecTree
from spectree.models import SecureType
from spectree.plugins.flask_plugin import FlaskPlugin

from k1.tasks.submissions import project_id_problem
from k1.web.errors import Answer, APIError, json_object

F = TypeVar("F", bound=Callable[..., Any])

API_VERSION = "1"  # of the HTTP contract; bump on a breaking change
# Deeper bodies are refused before they reach code that recurses over them (pydantic,
# Celery's serializer, jsonify of a stored result); real arguments nest a few levels.
MAX_JSON_DEPTH = 32
MAX_INT32 = 2**31 - 1  # Conductor's int fields (workflow versions)
MAX_NAME = 255  # task names, project ids, filters: the widest column they are compared with

Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]


def _project_id(value: str) -> str:
    problem = project_id_problem(value)
    if problem:  # a custom error: pydantic's message is the problem, without "Value error"
        raise PydanticCustomError("project_id", problem)
    return value


ProjectId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME),
                      AfterValidator(_project_id)]


class Body(BaseModel):
    """A JSON request body: JSON types as they are (no "1" for 1), no unknown fields."""

    model_config = ConfigDict(strict=True, extra="forbid")


class Query(BaseModel):
    """Query-string parameters: text converted to the declared types, no unknown ones."""

    model_config = ConfigDict(extra="forbid")


class Error(BaseModel):
    """Every error answer: what went wrong, and details (the field at fault, ...)."""

    error: str
    detail: Any = None


class Accepted(BaseModel):
    task_id: str


class UniqueClaim(BaseModel):
    """The claim of a unique task's key (k1.flow.unique)."""

    held: bool
    holder: str | None = None
    per: str | list[str] | None = None
    key: str | None = None
    since: int | None = None
    duplicates: int | None = None
    expires_in: float | None = None


class Duplicate(BaseModel):
    """A unique task whose key is already held: nothing was started; ``task_id`` (and
    ``duplicate_of``) is the task queued or running for that key."""

    task_id: str
    duplicate_of: str
    unique: UniqueClaim


# Answers any protected route may give, whatever it does.
COMMON_ERRORS = {"HTTP_400": Error, "HTTP_401": Error, "HTTP_429": Error, "HTTP_503": Error}


def responses(**codes: Any) -> Response:
    """spectree's ``Response`` with the common error answers added."""
    return Response(**{**COMMON_ERRORS, **codes})


# Pydantic's words for what a field must be, in the API's words (the domain code's too).
_PROBLEMS = {
    "missing": "required",
    "extra_forbidden": "unknown field",
    "string_type": "must be a string",
    "list_type": "must be a JSON list",
    "dict_type": "must be a JSON object",
    "model_type": "must be a JSON object",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
}
_BOUNDS = {"greater_than": ("gt", "greater than"), "greater_than_equal": ("ge", "at least"),
           "less_than": ("lt", "less than"), "less_than_equal": ("le", "at most")}
MAX_SHOWN = 60  # characters of a refused value quoted back


def _problem(error: Any) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    shown = repr(error.get("input"))[:MAX_SHOWN]
    if kind == "greater_than" and ctx.get("gt") == 0:
        return f"must be positive, got {shown}"
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"must be {words} {ctx[key]}, got {shown}"
    if kind == "literal_error":
        choices = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"must be one of {choices}, got {shown}"
    if kind == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else (
            f"must be at least {ctx.get('min_length')} characters")
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind in ("int_type", "int_parsing", "float_type", "bool_type", "string_type"):
        return f"{_PROBLEMS[kind]}, got {shown}"
    return _PROBLEMS.get(kind, str(error["msg"]).lower())


def _problems(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"field": ".".join(str(part) for part in error["loc"]) or "body",
             "problem": _problem(error)}
            for error in exc.errors(include_url=False)]


def _refuse_invalid(_request: Any, _response: Any, error: Exception | None, *_: Any) -> None:
    """spectree's ``before`` hook: a request that failed validation becomes our 400."""
    if error is None:
        return
    problems = _problems(error) if isinstance(error, ValidationError) else [
        {"field": "body", "problem": str(error)}]
    raise APIError(400, "; ".join(f"{p['field']}: {p['problem']}" for p in problems),
                   detail={**problems[0], "errors": problems})


class _DocumentedResponses(FlaskPlugin):
    """Responses are described in the document, not validated at run time: a route body
    that adds a field must not turn answers into 500s (the contract test checks them)."""

    def validate_response(self, resp: Any, resp_model: Any, skip_validation: bool,
                          force_resp_serialize: bool) -> Any:
        return super().validate_response(resp, None, True, False)


api = SpecTree(
    "flask",
    backend=_DocumentedResponses,
    mode="strict",  # describe the routes declared with validate(), not Flask's static files
    title="K1 API",
    description="Tasks, dead letters, schedules, breakers, workflows and metrics of K1.",
    version=API_VERSION,
    naming_strategy=lambda model: model.__name__,  # readable names; models are unique
    validation_error_status=400,
    validation_error_model=Error,
    before=_refuse_invalid,
    security_schemes=[SecurityScheme(
        name="bearer", data=SecuritySchemeData(type=SecureType.HTTP, scheme="bearer"))],
    security={"bearer": []},
)


def validate(*, json: type[Body] | None = None, query: type[Query] | None = None,
             resp: Response | None = None, public: bool = False, tags: tuple[str, ...] = (),
             body_required: bool = True) -> Callable[[F], F]:
    """Validate the request of a view against ``json``/``query`` and describe it.

    The view receives the validated models as its ``json``/``query`` arguments (annotate
    them). ``public`` routes need no token; without ``body_required`` an empty body reads
    as ``{}``.
    """
    resp = resp or responses()
    if json is not None:
        resp.add_model(413, Error, replace=False)  # past MAX_CONTENT_LENGTH
    checked = api.validate(json=json, query=query, resp=resp, tags=tags,
                           security=[] if public else None)

    def decorate(view: F) -> F:
        validated = checked(view)
        if json is None:
            return validated

        @functools.wraps(validated)
        def with_body(*args: Any, **kwargs: Any) -> Any:
            if body_required or request.get_data(cache=True):
                json_object()  # empty, not JSON, malformed, not an object: say which
            return validated(*args, **kwargs)

        return with_body  # type: ignore[return-value]  # same signature as the view

    return decorate


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON with the bounds above applied to what clients send."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        kwargs.setdefault("parse_constant", _refuse_constant)
        kwargs.setdefault("parse_float", _finite_float)
        try:
            value = std_json.loads(s, **kwargs)
        except RecursionError:
            raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
        _check_bounds(value)
        return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is too large")
    return value


def _check_bounds(value: Any) -> None:
    """Refuse nesting past MAX_JSON_DEPTH and text that cannot be UTF-8 (a lone
    surrogate escape such as ``"\\ud800"``: no store, queue or log could carry it)."""
    level = [value]
    depth = 0
    while level:
        children: list[Any] = []
        for item in level:
            if isinstance(item, str):
                _check_text(item)
            elif isinstance(item, dict):
                children.extend(item)
                children.extend(item.values())
            elif isinstance(item, list):
                children.extend(item)
        if any(isinstance(item, dict | list) for item in level):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
        level = children


def _check_text(text: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(f"a string holds a lone surrogate {text[exc.start]!r}, "
                         "not UTF-8 text") from None


bp = Blueprint("contract", __name__)


@bp.get("/api/openapi.json")
@validate(public=True, resp=Response(HTTP_200=None), tags=("contract",))
def openapi() -> Answer:
    """The OpenAPI 3.1 description of this API (no token needed)."""
    return jsonify(api.spec)


def init_app(app: Flask) -> None:
    """Parse bodies with the bounded JSON provider and serve the description."""
    app.json_provider_class = BoundedJSONProvider
    app.json = BoundedJSONProvider(app)
    app.register_blueprint(bp)
