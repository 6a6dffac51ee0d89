"""Settings: Heroku-style variables, normalised, with clear errors."""

import pytest

from k1.settings import Settings, SettingsError

KEY = "k" * 40


def settings(**env: str) -> Settings:
    return Settings.from_env({"K1_SECRET_KEY": KEY, **env})


def test_defaults_are_local() -> None:
    s = settings(K1_DATA_DIR="/tmp/k1-x")
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.database_url == "sqlite:////tmp/k1-x/k1.db"
    assert s.port == 5000 and s.flower_port == 5555
    assert s.conductor_server_url is None
    assert s.cors_origins == ()
    assert s.async_mode == "eventlet"


@pytest.mark.parametrize("url", [
    "postgres://u:p@db.example.com:5432/k1",
    "postgresql://u:p@db.example.com:5432/k1",
    "postgresql+psycopg://u:p@db.example.com:5432/k1",
])
def test_postgres_urls_are_normalised_for_psycopg3(url: str) -> None:
    assert settings(DATABASE_URL=url).database_url == "postgresql+psycopg://u:p@db.example.com:5432/k1"


def test_rediss_gets_a_certificate_policy() -> None:
    assert settings(REDIS_URL="rediss://:pw@h.example.com:6380").redis_url == (
        "rediss://:pw@h.example.com:6380?ssl_cert_reqs=required"
    )
    heroku = settings(REDIS_URL="rediss://:pw@h:6380", K1_REDIS_SSL_CERT_REQS="none")
    assert heroku.redis_url.endswith("?ssl_cert_reqs=none")


def test_cors_origins_are_a_list() -> None:
    s = settings(K1_CORS_ORIGINS="https://a.example.com, http://localhost:3000/")
    assert s.cors_origins == ("https://a.example.com", "http://localhost:3000")


@pytest.mark.parametrize(("env", "message"), [
    ({"REDIS_URL": "http://h:6379"}, "REDIS_URL: scheme must be"),
    ({"REDIS_URL": "unix:///run/redis.sock"}, "REDIS_URL: unix:// sockets are not supported"),
    ({"REDIS_URL": "redis://h:notaport/0"}, "REDIS_URL: invalid port"),
    ({"REDIS_URL": "redis://h:6379/x"}, "REDIS_URL: database must be a number"),
    ({"DATABASE_URL": "mysql://u@h/db"}, "DATABASE_URL: expected postgres://"),
    ({"DATABASE_URL": "postgres://u:secret@h:5432/"}, "DATABASE_URL: no database name"),
    ({"PORT": "eighty"}, "PORT: expected an integer, got 'eighty'"),
    ({"PORT": "70000"}, "PORT: must be between 1 and 65535"),
    ({"K1_CORS_ORIGINS": "*"}, "K1_CORS_ORIGINS: '*' is not allowed"),
    ({"K1_CORS_ORIGINS": "example.com"}, "K1_CORS_ORIGINS: each origin must look like"),
    ({"CONDUCTOR_SERVER_URL": "ftp://x"}, "CONDUCTOR_SERVER_URL: expected an http(s):// URL"),
    ({"K1_ASYNC_MODE": "asyncio"}, "K1_ASYNC_MODE: must be one of eventlet, gevent, threading"),
    ({"K1_SECRET_KEY": ""}, "K1_SECRET_KEY: not set"),
    ({"K1_SECRET_KEY": "short"}, "K1_SECRET_KEY: must be at least 32 characters"),
])
def test_malformed_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=None) as caught:
        settings(**env)
    assert message in str(caught.value)


def test_password_is_not_echoed_in_errors() -> None:
    with pytest.raises(SettingsError) as caught:
        settings(DATABASE_URL="postgres://u:hunter2@h:5432/")
    assert "hunter2" not in str(caught.value)
