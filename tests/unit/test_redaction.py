"""Passwords never show: the one URL redaction, and config objects whose repr, str and JSON
dumps carry server URLs."""

from __future__ import annotations

import json
import logging

import pytest

from market_data_core.config import AppConfig, config_hash, parse_config
from market_data_core.errors import ConfigError
from market_data_core.redaction import SecretUrl, redact_url
from market_data_pipeline.servers import ServerUrls

REDIS_PW = "rEdisPw-71"
PG_PW = "pgPw-93"
REDIS = f"redis://:{REDIS_PW}@127.0.0.1:6379/0"
PG = f"postgresql://mdp:{PG_PW}@127.0.0.1:5432/mdp"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://mdp:s3cret@db:5432/mdp", "postgresql://mdp:***@db:5432/mdp"),
        (
            "postgresql://mdp:p%40ss@db/mdp?sslmode=require",
            "postgresql://mdp:***@db/mdp?sslmode=require",
        ),
        ("postgresql://mdp@db/mdp?password=s3cret&x=1", "postgresql://mdp@db/mdp?password=***&x=1"),
        ("postgresql://db/mdp?sslpassword=k3y", "postgresql://db/mdp?sslpassword=***"),
        ("postgresql://db/mdp", "postgresql://db/mdp"),
        ("postgresql://mdp@db/mdp", "postgresql://mdp@db/mdp"),
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://default:pw@h:6380/1", "rediss://default:***@h:6380/1"),
        ("unix:///run/redis.sock?db=0&password=pw", "unix:///run/redis.sock?db=0&password=***"),
        # an unencoded '@' or '/' inside the password is hidden too
        ("redis://:p@ss/w@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("127.0.0.1:9092", "127.0.0.1:9092"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def _config() -> AppConfig:
    return parse_config({"bus": {"redis": {"uri": REDIS}}, "store": {"dsn": PG}})


def test_config_repr_str_and_json_never_show_a_password() -> None:
    cfg = _config()
    shown = [
        repr(cfg),
        str(cfg),
        repr(cfg.bus),
        repr(cfg.bus.redis),
        str(cfg.bus.redis),
        repr(cfg.store),
        str(cfg.store),
        f"{cfg.store.dsn} {cfg.bus.redis.uri}",
        cfg.model_dump_json(),
        cfg.bus.redis.model_dump_json(),
        cfg.store.model_dump_json(),
        json.dumps(cfg.model_dump(mode="json")),
    ]
    for text in shown:
        assert REDIS_PW not in text and PG_PW not in text, text
    dumped = json.loads(cfg.model_dump_json())
    assert dumped["bus"]["redis"]["uri"] == "redis://:***@127.0.0.1:6379/0"
    assert dumped["store"]["dsn"] == "postgresql://mdp:***@127.0.0.1:5432/mdp"
    assert "SecretUrl('postgresql://mdp:***@127.0.0.1:5432/mdp')" in repr(cfg.store)


def test_the_code_that_connects_gets_the_real_url() -> None:
    cfg = _config()
    assert cfg.bus.redis.uri is not None and cfg.store.dsn is not None
    assert cfg.bus.redis.uri.get_secret_value() == REDIS
    assert cfg.store.dsn.get_secret_value() == PG
    # a python-mode dump validates back to the same config (the CLI's flag overrides do this)
    again = AppConfig.model_validate(cfg.model_dump())
    assert again == cfg
    assert again.store.dsn is not None and again.store.dsn.get_secret_value() == PG


def test_config_hash_ignores_passwords_not_servers() -> None:
    other_pw = parse_config(
        {"bus": {"redis": {"uri": REDIS.replace(REDIS_PW, "x")}}, "store": {"dsn": PG}}
    )
    other_host = parse_config(
        {"bus": {"redis": {"uri": REDIS.replace("127.0.0.1", "10.0.0.9")}}, "store": {"dsn": PG}}
    )
    assert config_hash(other_pw) == config_hash(_config())
    assert config_hash(other_host) != config_hash(_config())


def test_a_rejected_url_is_quoted_without_its_password() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"store": {"dsn": f"mysql://u:{PG_PW}@h/db"}})
    assert "mysql://u:***@h/db" in str(info.value) and PG_PW not in str(info.value)


def test_secret_url_equality_and_truth() -> None:
    assert SecretUrl("redis://:a@h") == SecretUrl("redis://:a@h")
    assert SecretUrl("redis://:a@h") != SecretUrl("redis://:b@h")
    assert not SecretUrl("") and SecretUrl("redis://h")


def test_server_urls_repr_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    urls = ServerUrls(REDIS, PG, None)
    caplog.set_level(logging.INFO)
    logging.getLogger("test").info("servers %s %r", urls, urls)
    for text in (repr(urls), str(urls), urls.describe(), caplog.text):
        assert REDIS_PW not in text and PG_PW not in text, text
    assert urls.redis_url == REDIS and urls.database_url == PG
