"""The alert rules: valid, unit-tested with promtool, each linking a runbook section."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.support import ROOT

RULES = ROOT / "deploy" / "prometheus"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
PROMTOOL = shutil.which("promtool")  # `scripts/setup.sh test` installs Debian's prometheus


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("args", [["check", "rules", "alerts.yml"],
                                  ["test", "rules", "alerts_test.yml"]])
def test_promtool(args: list[str]) -> None:
    assert PROMTOOL, "promtool missing: run `scripts/setup.sh test` (Debian's prometheus)"
    done = subprocess.run([PROMTOOL, *args], cwd=RULES, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_rule_links_an_existing_runbook_section_and_is_unit_tested() -> None:
    # No YAML parser among K1's dependencies; promtool above checks the structure, this
    # reads each rule's name and runbook link in order.
    text = (RULES / "alerts.yml").read_text()
    names = re.findall(r"^ +- alert: (\w+)$", text, re.M)
    urls = re.findall(r"^ +runbook_url: (\S+)$", text, re.M)
    assert names and len(names) == len(urls)
    anchors = {github_anchor(line[3:]) for line in RUNBOOKS.read_text().splitlines()
               if line.startswith("## ")}
    tests = (RULES / "alerts_test.yml").read_text()
    for name, url in zip(names, urls, strict=True):
        path, _, anchor = url.partition("#")
        assert path == "docs/runbooks.md" and anchor in anchors, f"{name}: {url}"
        assert f"alertname: {name}" in tests, f"{name} has no unit test"
