"""One of each, read from the source (pure, no servers): the places issue #14 made single
stay single as code is added."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.support import ROOT
from tests.test_layers import import_graph

PACKAGE = ROOT / "k1"


def sources() -> dict[str, str]:
    return {str(path.relative_to(ROOT)): path.read_text() for path in sorted(PACKAGE.rglob("*.py"))}


def lines_matching(pattern: str) -> list[str]:
    found = re.compile(pattern)
    return [f"{name}:{number}: {line.strip()}"
            for name, text in sources().items()
            for number, line in enumerate(text.splitlines(), start=1)
            if found.search(line) and not line.lstrip().startswith("#")]


def test_one_way_to_send_a_task() -> None:
    """Every task K1 sends goes through k1.tasks.submissions.dispatch (headers, unique
    claims, history, the submission record)."""
    sends = [hit for hit in lines_matching(r"\.(apply_async|send_task|delay)\(")
             if not hit.startswith("k1/tasks/submissions.py:")]
    assert sends == []


def test_one_signature_binding() -> None:
    bindings = [hit for hit in lines_matching(r"\.bind(_partial)?\(\*")
                if not hit.startswith("k1/arguments.py:")]
    assert bindings == []


def test_the_events_sit_below_the_database_and_the_web() -> None:
    graph = import_graph()
    events = {name for name in graph if name == "k1.events" or name.startswith("k1.events.")}
    reached, todo = set(events), list(events)
    while todo:
        for imported in graph[todo.pop()] - reached:
            reached.add(imported)
            todo.append(imported)
    above = sorted(name for name in reached
                   if name.split(".")[1] in ("db", "recovery", "web", "tasks", "scheduling"))
    assert above == [], "k1.events reaches up to " + ", ".join(above)


def test_every_type_ignore_in_k1_names_its_code_and_why() -> None:
    """``# type: ignore[code]`` with a reason on its line or the line above."""
    unexplained = []
    for name, text in sources().items():
        lines = text.splitlines()
        for number, line in enumerate(lines):
            if "type: ignore" not in line:
                continue
            coded = re.search(r"type: ignore\[[a-z0-9_,-]+\](.*)", line)
            reason_here = coded and re.search(r"#\s*\S", coded.group(1))
            reason_above = number > 0 and lines[number - 1].lstrip().startswith("#")
            if not coded or not (reason_here or reason_above):
                unexplained.append(f"{name}:{number + 1}: {line.strip()}")
    assert unexplained == []


def test_the_repository_cites_no_file_it_does_not_hold() -> None:
    """Docs, docstrings and tests are self-contained: no citation of the architecture
    sketch by section, a file that is not in the repository."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    marker = "ARCHITECTURE " + "\u00a7"  # split: this file must not match itself
    citing = [name for name in tracked
              if (ROOT / name).is_file() and Path(name).suffix in (".py", ".md", ".js", ".sh",
                                                                   ".toml", ".json", ".yml")
              and marker in (ROOT / name).read_text(errors="replace")]
    assert citing == []
