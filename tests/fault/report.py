"""``python -m tests.fault.report``: the fault scenarios' figures as a Markdown table.

Each scenario of ``make test`` (``-m fault``) writes artifacts/fault/<scenario>.json; this
prints them the way docs/reliability.md shows them.
"""

from __future__ import annotations

import json

from tests.fault.platform import FIGURES

COLUMNS = ("scenario", "load", "fault", "sent", "completed", "lost", "duplicated_effects",
           "recovery_s")


def table() -> str:
    rows = [json.loads(path.read_text()) for path in sorted(FIGURES.glob("*.json"))]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = ["n/a" if row.get(c) is None else str(row.get(c)) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
