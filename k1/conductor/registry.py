"""The workflow definitions in ``workflows/*.json``: load, validate, register.

One file per workflow, named after it (``workflows/profile_workflow.json``)::

    {"workflow": {<Conductor WorkflowDef>},
     "tasks": [{<Conductor TaskDef>}, ...],     # a def for every SIMPLE task it uses
     "k1": {"operator_only": true}}             # optional: K1's own options (below)

``"k1"`` options (never sent to Conductor): ``operator_only`` marks a platform-wide
workflow (e.g. ``maintenance_workflow``, which prunes every project's executions): only
an operator token may start it, and it is started for no project.

A SIMPLE task's ``name`` is the name of the K1 Celery task that runs it (the bridge
hands it to Celery), so ``k1.tasks.analyze_profile`` in a workflow is
``k1.tasks.analyze_profile`` in Celery. Nothing reaches the server before every file
passes :func:`validate`::

    files = validate(load_directory(settings.workflows_dir))   # raises ValidationFailed
    for outcome in register(ConductorClient(), files):
        print(outcome)                       # "profile_workflow v1: created" ...

Versions: Conductor keeps every version of a workflow; a running execution keeps the
version it started with. :func:`register` stamps each definition with a digest of its
content (``metadata.k1_digest``) and refuses to replace a registered version whose
digest differs: changing a definition means bumping its ``version``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k1.conductor.client import ConductorClient, ConductorConflict

DIGEST_KEY = "k1_digest"  # in the definition's ``metadata``
# Task types K1 can serve: SIMPLE tasks run as Celery tasks through the bridge; the rest
# are system tasks the Conductor server runs itself, without any worker.
SIMPLE = "SIMPLE"
SYSTEM_TASK_TYPES = frozenset({
    "FORK_JOIN", "JOIN", "SWITCH", "DO_WHILE", "INLINE", "SET_VARIABLE", "TERMINATE",
    "SUB_WORKFLOW", "WAIT",
})
SERVED_TASK_TYPES = frozenset({SIMPLE}) | SYSTEM_TASK_TYPES
EVALUATOR_TYPES = ("value-param", "javascript", "graaljs")
RETRY_LOGICS = ("FIXED", "EXPONENTIAL_BACKOFF", "LINEAR_BACKOFF")
TASK_TIMEOUT_POLICIES = ("RETRY", "TIME_OUT_WF", "ALERT_ONLY")
WORKFLOW_TIMEOUT_POLICIES = ("TIME_OUT_WF", "ALERT_ONLY")
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # workflow names: file names, URL segments
# ${ref.output...} / ${ref.input...}: a reference to another task's data.
REFERENCE_RE = re.compile(r"\$\{([A-Za-z0-9_]+)\.")
NON_TASK_PREFIXES = frozenset({"workflow", "CPEWF_TASK_ID"})
K1_OPTIONS = {"operator_only": bool}  # the "k1" key of a file: option -> type


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a file: where it is and what to do about it."""

    path: Path
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.where}: {self.message}" if self.where else \
            f"{self.path}: {self.message}"


class ValidationFailed(ValueError):
    """Some files are invalid; ``problems`` lists every one found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class WorkflowFile:
    path: Path
    workflow: dict[str, Any]
    tasks: list[dict[str, Any]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # the file's "k1" key

    @property
    def operator_only(self) -> bool:
        return self.options.get("operator_only") is True

    @property
    def name(self) -> str:
        return self.workflow["name"]

    @property
    def version(self) -> int:
        return self.workflow["version"]

    def digest(self) -> str:
        """A hash of the definition as K1 registers it (without the digest itself)."""
        definition = {k: v for k, v in self.workflow.items() if k != "metadata"}
        metadata = {k: v for k, v in (self.workflow.get("metadata") or {}).items()
                    if k != DIGEST_KEY}
        canonical = json.dumps({**definition, "metadata": metadata}, sort_keys=True,
                               separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def definition(self) -> dict[str, Any]:
        """The WorkflowDef to send: the file's, stamped with its digest."""
        metadata = {**(self.workflow.get("metadata") or {}), DIGEST_KEY: self.digest()}
        return {**self.workflow, "metadata": metadata}

    def simple_task_names(self) -> list[str]:
        return sorted({t["name"] for t in walk_tasks(self.workflow.get("tasks", []))
                       if t.get("type") == SIMPLE})


# --------------------------------------------------------------------------- loading


def load_directory(directory: Path) -> list[WorkflowFile]:
    """Load every ``*.json`` in ``directory`` (sorted); raises ValidationFailed."""
    paths = sorted(Path(directory).glob("*.json"))
    if not paths:
        raise ValidationFailed([Problem(Path(directory), "", "no workflow files (*.json)")])
    return load_files(paths)


def load_files(paths: Iterable[Path]) -> list[WorkflowFile]:
    """Parse the files and check their shape; every problem is reported at once."""
    files, problems = [], []
    for path in paths:
        try:
            files.append(_load(Path(path)))
        except ValidationFailed as exc:
            problems.extend(exc.problems)
    if problems:
        raise ValidationFailed(problems)
    return files


def _load(path: Path) -> WorkflowFile:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationFailed([Problem(path, "", f"cannot read: {exc}")]) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationFailed([Problem(
            path, f"line {exc.lineno}, column {exc.colno}", f"invalid JSON: {exc.msg}",
        )]) from None
    if not isinstance(document, dict):
        raise ValidationFailed([Problem(path, "", 'expected an object {"workflow": ..., '
                                                  '"tasks": [...]}')])
    problems = [Problem(path, "", f"unknown top-level key {key!r} (expected workflow, "
                                  "tasks, k1)")
                for key in sorted(set(document) - {"workflow", "tasks", "k1"})]
    workflow, tasks = document.get("workflow"), document.get("tasks", [])
    options = document.get("k1", {})
    if not isinstance(workflow, dict):
        problems.append(Problem(path, "workflow", "required, a workflow definition object"))
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        problems.append(Problem(path, "tasks", "must be a list of task definition objects"))
    if not isinstance(options, dict):
        problems.append(Problem(path, "k1", "must be an object of K1 options "
                                            f"({', '.join(K1_OPTIONS)})"))
    else:
        for key, value in options.items():
            expected = K1_OPTIONS.get(key)
            if expected is None:
                problems.append(Problem(path, f"k1.{key}", "unknown option (known: "
                                                           f"{', '.join(K1_OPTIONS)})"))
            elif not isinstance(value, expected):
                problems.append(Problem(path, f"k1.{key}", f"must be a {expected.__name__}"))
    if problems or not isinstance(workflow, dict):
        raise ValidationFailed(problems)
    return WorkflowFile(path, workflow, tasks, options)


# --------------------------------------------------------------------------- validation


def validate(files: list[WorkflowFile],
             celery_tasks: Mapping[str, Any] | None = None) -> list[WorkflowFile]:
    """Check ``files`` together; return them, or raise ValidationFailed listing every
    problem. ``celery_tasks`` maps names to Celery tasks (default: K1's registered ones).
    """
    if celery_tasks is None:
        celery_tasks = k1_celery_tasks()
    problems: list[Problem] = []
    names = {f.workflow.get("name") for f in files}
    seen: dict[str, Path] = {}
    task_defs: dict[str, tuple[Path, dict[str, Any]]] = {}
    for wf in files:
        name = wf.workflow.get("name")
        if isinstance(name, str) and name in seen:
            problems.append(Problem(wf.path, "workflow.name",
                                    f"{name!r} is also defined in {seen[name]}"))
        elif isinstance(name, str):
            seen[name] = wf.path
        problems.extend(_check_workflow(wf, names, celery_tasks))
        for task_def in wf.tasks:
            problems.extend(_check_task_def(wf.path, task_def, celery_tasks))
            def_name = task_def.get("name")
            if isinstance(def_name, str):
                earlier = task_defs.get(def_name)
                if earlier is not None and earlier[1] != task_def:
                    problems.append(Problem(
                        wf.path, f"tasks[{def_name}]",
                        f"differs from the definition of the same task in {earlier[0]}; "
                        "task definitions are shared by name and must be identical"))
                task_defs.setdefault(def_name, (wf.path, task_def))
    if problems:
        raise ValidationFailed(problems)
    return files


def operator_only_workflows(directory: Path) -> frozenset[str]:
    """Names of the workflows whose file says ``"k1": {"operator_only": true}``; raises
    ValidationFailed when the files cannot be read (callers refuse rather than guess).
    """
    return frozenset(f.name for f in load_directory(directory) if f.operator_only)


def k1_celery_tasks() -> dict[str, Any]:
    """K1's Celery tasks by name (those of the modules in ``celeryconfig.imports``)."""
    from k1.celery import app, load_task_modules

    load_task_modules()
    return {name: task for name, task in app.tasks.items() if not name.startswith("celery.")}


def walk_tasks(tasks: Any, path: str = "workflow.tasks") -> Iterator[dict[str, Any]]:
    """Every task of a task list, nested ones included (fork branches, switch cases,
    loop bodies), in order.
    """
    for _, task in _walk(tasks, path):
        yield task


def _walk(tasks: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(tasks, list):
        return
    for index, task in enumerate(tasks):
        if not isinstance(task, dict):
            continue
        where = f"{path}[{index}]"
        yield where, task
        for branch_index, branch in enumerate(task.get("forkTasks") or []):
            yield from _walk(branch, f"{where}.forkTasks[{branch_index}]")
        for case, branch in (task.get("decisionCases") or {}).items():
            yield from _walk(branch, f"{where}.decisionCases[{case}]")
        yield from _walk(task.get("defaultCase"), f"{where}.defaultCase")
        yield from _walk(task.get("loopOver"), f"{where}.loopOver")


def _check_workflow(wf: WorkflowFile, workflow_names: set[Any],
                    celery_tasks: Mapping[str, Any]) -> list[Problem]:
    p: list[Problem] = []
    add = lambda where, message: p.append(Problem(wf.path, where, message))  # noqa: E731
    w = wf.workflow
    name, version = w.get("name"), w.get("version")
    if not isinstance(name, str) or not NAME_RE.match(name):
        add("workflow.name", "required: letters, digits and underscores, starting with a letter")
    elif wf.path.stem != name:
        add("workflow.name", f"{name!r} must match the file name ({wf.path.name} holds "
                             f"{wf.path.stem!r}); rename the file to {name}.json")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        add("workflow.version", "required, an integer >= 1 (bump it to change a definition)")
    if w.get("schemaVersion", 2) != 2:
        add("workflow.schemaVersion", "must be 2")
    timeout = w.get("timeoutSeconds", 0)
    if not _non_negative_int(timeout):
        add("workflow.timeoutSeconds", "must be an integer >= 0")
    policy = w.get("timeoutPolicy", "ALERT_ONLY")
    if policy not in WORKFLOW_TIMEOUT_POLICIES:
        add("workflow.timeoutPolicy", f"must be one of {', '.join(WORKFLOW_TIMEOUT_POLICIES)}")
    elif policy == "TIME_OUT_WF" and timeout == 0:
        add("workflow.timeoutSeconds", "must be > 0 with timeoutPolicy TIME_OUT_WF")
    failure = w.get("failureWorkflow")
    if failure is not None and failure not in workflow_names:
        add("workflow.failureWorkflow", f"{failure!r} is not defined in any workflow file")
    tasks = w.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        add("workflow.tasks", "required, a non-empty list of tasks")
        return p

    defined = {t.get("name") for t in wf.tasks}
    refs: dict[str, str] = {}
    walked = list(_walk(tasks, "workflow.tasks"))
    for where, task in walked:
        ref = task.get("taskReferenceName")
        if not isinstance(task.get("name"), str) or not task["name"]:
            add(where, "name: required")
        if not isinstance(ref, str) or not ref:
            add(where, "taskReferenceName: required")
        elif ref in refs:
            add(where, f"taskReferenceName {ref!r} is used twice (also at {refs[ref]})")
        else:
            refs[ref] = where
    for where, task in walked:
        p.extend(_check_task(wf, where, task, refs, defined, workflow_names, celery_tasks))
    output = w.get("outputParameters", {})
    for ref in _references(output):
        if ref not in refs:
            add("workflow.outputParameters", f"refers to task {ref!r}, which this workflow "
                                             "does not have")
    used = {t["name"] for _, t in walked if t.get("type") == SIMPLE and "name" in t}
    for unused in sorted(n for n in defined - used if isinstance(n, str)):
        add(f"tasks[{unused}]", "defined but not used by the workflow; remove it")
    return p


def _check_task(wf: WorkflowFile, where: str, task: dict[str, Any], refs: dict[str, str],
                defined: set[Any], workflow_names: set[Any],
                celery_tasks: Mapping[str, Any]) -> list[Problem]:
    p: list[Problem] = []
    add = lambda message: p.append(Problem(wf.path, where, message))  # noqa: E731
    kind, name = task.get("type", SIMPLE), task.get("name")
    if kind not in SERVED_TASK_TYPES:
        add(f"type {kind!r} is not served by K1 (SIMPLE tasks run on Celery; system tasks "
            f"{', '.join(sorted(SYSTEM_TASK_TYPES))})")
        return p
    inputs = task.get("inputParameters", {})
    if not isinstance(inputs, dict):
        add("inputParameters: must be an object")
        inputs = {}
    for ref in _references(inputs) | _references(task.get("expression")):
        if ref not in refs:
            add(f"refers to task {ref!r}, which this workflow does not have")
    if kind == SIMPLE and isinstance(name, str):
        if name not in defined:
            add(f"SIMPLE task {name!r} has no definition in this file's \"tasks\"")
        task_obj = celery_tasks.get(name)
        if task_obj is None:
            add(f"SIMPLE task {name!r} is not a K1 Celery task; a SIMPLE task's name must be "
                "the name of the Celery task that runs it")
        else:
            p.extend(Problem(wf.path, where, m) for m in _check_arguments(task_obj, inputs))
    elif kind == "FORK_JOIN":
        branches = task.get("forkTasks")
        if not isinstance(branches, list) or not branches or not all(
                isinstance(b, list) and b for b in branches):
            add("forkTasks: required, a list of non-empty task lists")
    elif kind == "JOIN":
        for ref in task.get("joinOn") or []:
            if ref not in refs:
                add(f"joinOn names {ref!r}, which this workflow does not have")
    elif kind == "SWITCH":
        if task.get("evaluatorType") not in EVALUATOR_TYPES:
            add(f"evaluatorType: must be one of {', '.join(EVALUATOR_TYPES)}")
        if not task.get("expression"):
            add("expression: required for SWITCH")
        cases = task.get("decisionCases")
        if not isinstance(cases, dict) or not all(isinstance(c, list) for c in cases.values()):
            add("decisionCases: required, an object of task lists")
    elif kind == "SUB_WORKFLOW":
        sub = (task.get("subWorkflowParam") or {}).get("name")
        if sub not in workflow_names:
            add(f"subWorkflowParam.name {sub!r} is not defined in any workflow file")
    return p


def _check_arguments(task: Any, inputs: dict[str, Any]) -> list[str]:
    """The Conductor task's input becomes the Celery task's keyword arguments: they must
    bind to its signature (values are expressions here, so only the names are checked)."""
    from k1.tasks.submissions import SubmissionError, check_arguments

    try:
        check_arguments(task.name, kwargs=dict.fromkeys(inputs))
    except SubmissionError as exc:
        return [f"inputParameters: {exc}"]
    return []


def _check_task_def(path: Path, task_def: dict[str, Any],
                    celery_tasks: Mapping[str, Any]) -> list[Problem]:
    p: list[Problem] = []
    name = task_def.get("name")
    where = f"tasks[{name}]" if isinstance(name, str) else "tasks[?]"
    add = lambda message: p.append(Problem(path, where, message))  # noqa: E731
    if not isinstance(name, str) or not name:
        add("name: required")
    elif name not in celery_tasks:
        add(f"{name!r} is not a K1 Celery task")
    for key in ("retryCount", "retryDelaySeconds", "timeoutSeconds"):
        if key in task_def and not _non_negative_int(task_def[key]):
            add(f"{key}: must be an integer >= 0")
    if task_def.get("retryLogic", "FIXED") not in RETRY_LOGICS:
        add(f"retryLogic: must be one of {', '.join(RETRY_LOGICS)}")
    if task_def.get("timeoutPolicy", "TIME_OUT_WF") not in TASK_TIMEOUT_POLICIES:
        add(f"timeoutPolicy: must be one of {', '.join(TASK_TIMEOUT_POLICIES)}")
    response, timeout = task_def.get("responseTimeoutSeconds"), task_def.get("timeoutSeconds", 0)
    if not isinstance(response, int) or isinstance(response, bool) or response < 1:
        add("responseTimeoutSeconds: required, an integer >= 1")
    elif _non_negative_int(timeout) and timeout > 0 and response > timeout:
        add(f"responseTimeoutSeconds ({response}) must not exceed timeoutSeconds ({timeout}); "
            "Conductor refuses such a definition")
    return p


def _references(value: Any) -> set[str]:
    """Task reference names used in ``${ref....}`` expressions anywhere in ``value``."""
    text = json.dumps(value) if not isinstance(value, str) else value
    return {m for m in REFERENCE_RE.findall(text or "") if m not in NON_TASK_PREFIXES}


def _non_negative_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --------------------------------------------------------------------------- registration


class VersionConflict(Exception):
    """A registered version differs from its file; the file needs a new version."""


@dataclass(frozen=True)
class Outcome:
    name: str
    version: int
    action: str  # "created", "unchanged"

    def __str__(self) -> str:
        return f"{self.name} v{self.version}: {self.action}"


def check_versions(client: ConductorClient, files: list[WorkflowFile]) -> dict[str, str]:
    """name -> "new" or "unchanged" for each file; raises VersionConflict listing every
    registered version whose content differs from its file.
    """
    states, conflicts = {}, []
    for wf in files:
        registered = client.get_workflow_def(wf.name, wf.version)
        if registered is None:
            states[wf.name] = "new"
            continue
        digest = (registered.get("metadata") or {}).get(DIGEST_KEY)
        if digest == wf.digest():
            states[wf.name] = "unchanged"
        else:
            latest = client.get_workflow_def(wf.name) or registered
            conflicts.append(
                f"{wf.path}: {wf.name} v{wf.version} is registered with different content "
                f"(server digest {digest or 'none'}, file {wf.digest()}); set \"version\" to "
                f"{int(latest.get('version', wf.version)) + 1} to register the change "
                "(running executions keep their version)")
    if conflicts:
        raise VersionConflict("\n".join(conflicts))
    return states


def register(client: ConductorClient, files: list[WorkflowFile]) -> list[Outcome]:
    """Register validated ``files``: task definitions first, then each workflow version
    that is not on the server yet. Idempotent; raises VersionConflict before changing
    anything when a registered version differs from its file.
    """
    states = check_versions(client, files)
    task_defs: dict[str, dict[str, Any]] = {}
    for wf in files:
        for task_def in wf.tasks:
            task_defs[task_def["name"]] = task_def
    if task_defs:
        client.register_task_defs(list(task_defs.values()))
    outcomes = []
    # Failure and sub-workflows first, so that a workflow never names a missing one.
    for wf in sorted(files, key=lambda f: _dependents_last(f, files)):
        if states[wf.name] == "unchanged":
            outcomes.append(Outcome(wf.name, wf.version, "unchanged"))
            continue
        try:
            client.create_workflow_def(wf.definition())
        except ConductorConflict:
            check_versions(client, [wf])  # registered meanwhile: fine if the same content
            outcomes.append(Outcome(wf.name, wf.version, "unchanged"))
            continue
        outcomes.append(Outcome(wf.name, wf.version, "created"))
    return outcomes


def _dependents_last(wf: WorkflowFile, files: list[WorkflowFile]) -> tuple[int, str]:
    depends = bool(wf.workflow.get("failureWorkflow")) or any(
        t.get("type") == "SUB_WORKFLOW" for t in walk_tasks(wf.workflow.get("tasks")))
    return (1 if depends else 0, wf.name)
