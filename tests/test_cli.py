"""The k1 command: tokens on stdout alone, configuration errors in words, edited replays of
dead letters (real Redis, PostgreSQL, worker and history recorder)."""

import json
import os
from typing import Any
from urllib.parse import urlsplit

import pytest

from k1.auth import SIGNIN, InvalidToken, decode_token, verify_token
from tests.history.conftest import recorder  # noqa: F401  # the fixture
from tests.recovery.test_dlq_edited_replay import seed
from tests.support import Process, run_k1, wait_for

pytestmark = pytest.mark.usefixtures("redis_server")  # the revocation list lives in Redis



def test_token_create_prints_the_token_alone() -> None:
    done = run_k1("token", "create", "--user", "ada", "--project", "acme", "--project", "b",
                  "--ttl", "120")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert done.stdout == token + "\n"
    principal = verify_token(token, secret=os.environ["K1_SECRET_KEY"])
    assert principal.user_id == "ada" and principal.projects == {"acme", "b"}
    assert principal.expires_at - 120 <= __import__("time").time() + 5


def test_configuration_error_is_reported_and_exits_2() -> None:
    done = run_k1("token", "create", "--user", "a", "--project", "p", env={"PORT": "http"})
    assert done.returncode == 2
    assert "configuration error: PORT: expected an integer, got 'http'" in done.stderr


@pytest.mark.parametrize(("args", "message"), [
    (("--project", ""), "a project name cannot be empty"),
    (("--project", "acme", "--project", " "), "a project name cannot be empty"),
    (("--project", "acme", "--ttl", str(30_000 * 365 * 86400)), "ttl must be between 1 and"),
])
def test_token_create_refuses_tokens_that_should_not_exist(args: tuple[str, ...],
                                                           message: str) -> None:
    done = run_k1("token", "create", "--user", "ada", *args)
    assert done.returncode == 2 and done.stdout == ""
    assert message in done.stderr


def test_token_revoke_refuses_the_token_everywhere() -> None:
    token = run_k1("token", "create", "--user", "ada", "--project", "acme").stdout.strip()
    secret = os.environ["K1_SECRET_KEY"]
    token_id = verify_token(token, secret=secret).token_id
    done = run_k1("token", "revoke", token)
    assert done.returncode == 0 and done.stdout.strip() == f"token {token_id} revoked"
    with pytest.raises(InvalidToken, match="token revoked"):
        verify_token(token, secret=secret)
    again = run_k1("token", "revoke", "--id", token_id)
    assert again.stdout.strip() == f"token {token_id} was revoked already"
    forged = run_k1("token", "revoke", "not-a-token")
    assert forged.returncode == 2 and "not a token of this platform" in forged.stderr


def test_signin_link_carries_a_short_lived_operator_signin_token() -> None:
    done = run_k1("token", "signin-link", "--base-url", "http://127.0.0.1:5000/")
    assert done.returncode == 0, done.stderr
    link = urlsplit(done.stdout.strip())
    assert (link.scheme, link.netloc, link.path) == ("http", "127.0.0.1:5000", "/")
    assert link.fragment.startswith("signin=")
    principal = decode_token(link.fragment.removeprefix("signin="),
                             secret=os.environ["K1_SECRET_KEY"], use=SIGNIN)
    assert principal.is_operator and principal.user_id == "operator"
    assert principal.expires_at <= __import__("time").time() + 10 * 60 + 5


# -- k1 dlq replay --args/--kwargs: an edited replay from a shell ------------------------

@pytest.mark.usefixtures("worker")
def test_dlq_replay_with_edited_kwargs_is_recorded_as_an_edited_replay(
        services: dict[str, object], recorder: Process, unique: str) -> None:  # noqa: F811
    from k1.history.store import get
    from k1.recovery.dlq.store import DeadLetterStore

    project = f"cli-{unique}"
    letter_id = seed(project)
    edited = {"project_id": project, "permanent": False, "key": f"edited-{unique}"}
    done = run_k1("dlq", "replay", str(letter_id), "--kwargs", json.dumps(edited),
                  "--user", f"ops-{unique}")
    assert done.returncode == 0, done.stderr
    letter = DeadLetterStore().get(letter_id)
    assert letter.status == "replayed" and letter.kwargs["permanent"] is True  # the original
    assert done.stdout.strip() == (f"letter {letter_id} replayed as task "
                                   f"{letter.replay_task_id} (edited: kwargs)")

    def replayed() -> Any:
        found = get(str(letter.replay_task_id))
        return found and found[0].state == "SUCCESS" and found[0]

    row = wait_for(replayed, timeout=60, interval=0.2,
                   message=lambda: f"history of the replay: {get(str(letter.replay_task_id))}")
    assert row.kwargs == edited and row.user_id == f"ops-{unique}"
    assert (row.replay_of, row.replay_edited) == (str(letter_id), "kwargs")


@pytest.mark.parametrize(("options", "message"), [
    (("--kwargs", "{permanent: false}"), "Invalid value for '--kwargs': not JSON"),
    (("--args", '{"permanent": false}'), "Invalid value for '--args': must be a JSON list"),
    (("--kwargs", "[]"), "Invalid value for '--kwargs': must be a JSON object"),
    (("--kwargs", '{"colour": "red"}'),
     "--kwargs: arguments do not match k1.tasks.demo.flaky"),
    (("--args", '["elsewhere"]'), "--args: arguments do not match"),
    (("--kwargs", '{"sleep_ms": -1}'), "--kwargs: sleep_ms: must be an integer from 0"),
])
def test_dlq_replay_refuses_a_bad_edit_naming_the_option(
        services: dict[str, object], unique: str, options: tuple[str, ...],
        message: str) -> None:
    from k1.recovery.dlq.store import DeadLetterStore

    letter_id = seed(f"cli-{unique}")
    done = run_k1("dlq", "replay", str(letter_id), *options)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr, done.stderr
    assert DeadLetterStore().get(letter_id).status == "dead"  # nothing was sent


def test_dlq_replay_edits_one_letter_only_and_a_task_clients_may_start(
        services: dict[str, object], unique: str) -> None:
    from k1.recovery.dlq.store import DeadLetterStore

    everything = run_k1("dlq", "replay", "--all", "--args", "[]")
    assert everything.returncode == 2
    assert "--args: edited arguments replay one letter: give LETTER_ID" in everything.stderr
    private = seed(f"cli-{unique}", task="k1.dlq.enforce_retention", kwargs={})
    refused = run_k1("dlq", "replay", str(private), "--kwargs", "{}")
    assert refused.returncode == 1 and "replay its letter unchanged" in refused.stderr
    assert DeadLetterStore().get(private).status == "dead"
