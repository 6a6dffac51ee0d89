"""The release phase (`k1 db upgrade`) run twice at once, as two deploys may: both succeed."""

from __future__ import annotations

import os
import subprocess

import psycopg

from tests.ops.support import fresh_database
from tests.support import VENV_BIN

RELEASES = 4  # concurrent release phases; more than two makes the race likelier


def test_concurrent_release_phases_migrate_once(services: dict[str, object]) -> None:
    url = fresh_database("k1_release_race")
    env = {**os.environ, "DATABASE_URL": url}
    releases = [subprocess.Popen([str(VENV_BIN / "k1"), "db", "upgrade"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for _ in range(RELEASES)]
    outputs = [release.communicate(timeout=120)[0] for release in releases]
    assert [release.returncode for release in releases] == [0] * RELEASES, outputs
    with psycopg.connect(url.replace("postgres://", "postgresql://")) as connection:
        versions = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    from alembic.script import ScriptDirectory

    from k1.db.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert versions == [(head,)]
