"""Workflow files are checked before anything reaches the server; versions are kept."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from k1.conductor.client import ConductorClient
from k1.conductor.registry import (
    DIGEST_KEY,
    ValidationFailed,
    VersionConflict,
    load_directory,
    load_files,
    register,
    validate,
)
from tests.conductor.conftest import WORKFLOWS, wait_for_workflow, write_json
from tests.support import run_k1


def probe_workflow(name: str, version: int = 1, **changes: object) -> dict:
    """A one-task workflow file around k1.conductor.render_report."""
    workflow = {
        "name": name, "version": version, "schemaVersion": 2,
        "inputParameters": ["project_id"],
        "tasks": [{"name": "k1.conductor.render_report", "taskReferenceName": "render",
                   "type": "SIMPLE",
                   "inputParameters": {"project_id": "${workflow.input.project_id}",
                                       "analysis": "${workflow.input.analysis}"}}],
        "outputParameters": {"report": "${render.output.report}"},
        "timeoutPolicy": "TIME_OUT_WF", "timeoutSeconds": 600,
    }
    workflow.update(changes)
    return {"workflow": workflow, "tasks": [{
        "name": "k1.conductor.render_report", "retryCount": 2, "retryLogic": "FIXED",
        "retryDelaySeconds": 5, "timeoutSeconds": 300, "timeoutPolicy": "RETRY",
        "responseTimeoutSeconds": 120, "ownerEmail": "k1@localhost"}]}


def problems_of(*paths: Path) -> str:
    with pytest.raises(ValidationFailed) as caught:
        validate(load_files(paths))
    return "\n".join(str(p) for p in caught.value.problems)


def test_the_shipped_workflows_are_valid() -> None:
    files = validate(load_directory(WORKFLOWS))
    names = {f.name for f in files}
    assert {"profile_workflow", "maintenance_workflow", "profile_review_workflow",
            "profile_review_compensation"} <= names
    types = {t["type"] for f in files for t in _all_tasks(f.workflow["tasks"])}
    assert {"FORK_JOIN", "JOIN", "SWITCH", "SIMPLE"} <= types
    assert any(f.workflow.get("failureWorkflow") for f in files)


def _all_tasks(tasks: list) -> list:
    from k1.conductor.registry import walk_tasks

    return list(walk_tasks(tasks))


def test_json_syntax_errors_give_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "workflow": {\n    "name": "broken",\n    "version": 1,,\n  }\n}\n')
    text = problems_of(path)
    assert f"{path}: line 4, column 18: invalid JSON" in text


def test_structural_problems_are_all_reported(tmp_path: Path) -> None:
    doc = probe_workflow("bad_refs", version=0)
    tasks = doc["workflow"]["tasks"]
    tasks[0]["inputParameters"]["analysis"] = "${nowhere.output}"
    tasks[0]["inputParameters"]["colour"] = "blue"
    tasks.append({"name": "k1.tasks.nope", "taskReferenceName": "nope", "type": "SIMPLE"})
    tasks.append({"name": "call", "taskReferenceName": "call", "type": "HTTP"})
    tasks.append({"name": "join", "taskReferenceName": "render", "type": "JOIN",
                  "joinOn": ["ghost"]})
    doc["workflow"]["failureWorkflow"] = "missing_compensation"
    doc["tasks"][0]["responseTimeoutSeconds"] = 900
    text = problems_of(write_json(tmp_path / "bad_refs.json", doc))
    for expected in (
        "workflow.version: required, an integer >= 1",
        "refers to task 'nowhere', which this workflow does not have",
        "inputParameters: arguments do not match k1.conductor.render_report",
        "unexpected keyword argument 'colour'",
        "SIMPLE task 'k1.tasks.nope' is not a K1 Celery task",
        "SIMPLE task 'k1.tasks.nope' has no definition in this file's \"tasks\"",
        "type 'HTTP' is not served by K1",
        "taskReferenceName 'render' is used twice",
        "joinOn names 'ghost'",
        "failureWorkflow: 'missing_compensation' is not defined in any workflow file",
        "responseTimeoutSeconds (900) must not exceed timeoutSeconds (300)",
    ):
        assert expected in text, f"{expected!r} not in:\n{text}"


def test_file_name_must_match_the_workflow(tmp_path: Path) -> None:
    text = problems_of(write_json(tmp_path / "other.json", probe_workflow("named")))
    assert "'named' must match the file name" in text


def test_cli_rejects_invalid_files_before_the_server(tmp_path: Path, conductor_env,
                                                     conductor: ConductorClient) -> None:
    doc = probe_workflow("never_registered")
    doc["workflow"]["tasks"][0]["name"] = "k1.tasks.not_a_task"
    path = write_json(tmp_path / "never_registered.json", doc)
    done = run_k1("workflows", "register", str(path), env=conductor_env)
    assert done.returncode == 1
    assert "not a K1 Celery task" in done.stderr and "nothing was sent" in done.stderr
    assert conductor.get_workflow_def("never_registered") is None


def test_register_is_idempotent_and_a_change_needs_a_new_version(
        tmp_path: Path, conductor: ConductorClient, bridge, unique: str) -> None:
    name = f"version_probe_{unique}"
    path = write_json(tmp_path / f"{name}.json", probe_workflow(name))
    v1 = validate(load_files([path]))
    assert [str(o) for o in register(conductor, v1)] == [f"{name} v1: created"]
    assert [str(o) for o in register(conductor, v1)] == [f"{name} v1: unchanged"]
    registered = conductor.get_workflow_def(name, 1)
    assert registered["metadata"][DIGEST_KEY] == v1[0].digest()
    first_run = conductor.start_workflow(name, {"project_id": "acme",
                                                "analysis": {"profile": {"score": 1}}})

    changed = probe_workflow(name, outputParameters={"report": "${render.output.report}",
                                                     "score": "${render.output.score}"})
    write_json(path, changed)
    with pytest.raises(VersionConflict, match='set "version" to 2'):
        register(conductor, validate(load_files([path])))
    assert "score" not in conductor.get_workflow_def(name, 1)["outputParameters"]

    write_json(path, probe_workflow(name, version=2, **{k: v for k, v in changed["workflow"]
                                                         .items() if k == "outputParameters"}))
    assert [str(o) for o in register(conductor, validate(load_files([path])))] == [
        f"{name} v2: created"]
    assert conductor.get_workflow_def(name)["version"] == 2
    second_run = conductor.start_workflow(name, {"project_id": "acme",
                                                 "analysis": {"profile": {"score": 2}}})
    old = wait_for_workflow(conductor, first_run, "COMPLETED")
    new = wait_for_workflow(conductor, second_run, "COMPLETED")
    assert old["workflowVersion"] == 1 and "score" not in old["output"]
    assert new["workflowVersion"] == 2 and new["output"]["score"] == 2
    assert json.loads(json.dumps(new["output"]))["report"].startswith("Profile report")


RACING_FILES = 4  # fresh workflows two registrations create at once: one race each


def test_two_registrations_at_once_both_succeed(tmp_path: Path, conductor: ConductorClient,
                                                unique: str) -> None:
    """Two conductor workers starting together (a deploy with conductor=2) register the
    same new files at once. The loser of a create answers "already exists" with 500 when
    both passed Conductor's existence check (its insert then fails), not 409: it must
    read as registered meanwhile, and the other files must still be registered."""
    names = [f"race_probe_{unique}_{i}" for i in range(RACING_FILES)]
    files = validate(load_files([write_json(tmp_path / f"{name}.json", probe_workflow(name))
                                 for name in names]))
    together = threading.Barrier(2)

    def start_a_worker() -> list[str]:
        client = ConductorClient(conductor.base_url)
        together.wait(timeout=30)
        return [o.action for o in register(client, files)]

    with ThreadPoolExecutor(2) as pool:
        runs = [future.result() for future in [pool.submit(start_a_worker) for _ in range(2)]]
    for index, name in enumerate(names):
        assert conductor.get_workflow_def(name, 1) is not None, name
        assert "created" in (runs[0][index], runs[1][index]), runs


def test_k1_options_are_checked_and_operator_only_is_read(tmp_path: Path) -> None:
    doc = {**probe_workflow("opts"), "k1": {"operator_only": "yes", "colour": "red"}}
    text = problems_of(write_json(tmp_path / "opts.json", doc))
    assert "k1.operator_only: must be a bool" in text
    assert "k1.colour: unknown option" in text
    doc["k1"] = {"operator_only": True}
    (wf,) = validate(load_files([write_json(tmp_path / "opts.json", doc)]))
    assert wf.operator_only and "operator_only" not in json.dumps(wf.definition())
    shipped = {f.name: f.operator_only for f in load_directory(WORKFLOWS)}
    assert shipped["maintenance_workflow"] is True and shipped["profile_workflow"] is False
