from __future__ import annotations

from pathlib import Path

import pytest

from market_data_core.config import AppConfig, expand_env, load_config
from market_data_core.errors import ConfigError
from tests.conftest import SHIPPED_CONFIG


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_shipped_config_loads() -> None:
    cfg = load_config(SHIPPED_CONFIG, env={})
    assert cfg.bus.type == "redis"
    assert cfg.bus.redis.uri is None  # embedded by default
    assert cfg.micro_batch.window_ms == 2000
    assert [w.name for w in cfg.features.windows][:3] == ["vwap_1m", "ret_30s", "vol_5m"]


def test_env_interpolation_with_defaults() -> None:
    env = {"REDIS_URI": "redis://h:1/0"}
    data = {"a": "${REDIS_URI:-x}", "b": "${NOPE:-fallback}", "c": ["${NOPE:-}"], "d": 3}
    assert expand_env(data, env) == {"a": "redis://h:1/0", "b": "fallback", "c": [""], "d": 3}


def test_env_value_reaches_config() -> None:
    cfg = load_config(SHIPPED_CONFIG, env={"REDIS_URI": "rediss://:pw@h:6380/1"})
    assert cfg.bus.redis.uri is not None
    assert cfg.bus.redis.uri.get_secret_value() == "rediss://:pw@h:6380/1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bus: {type: redis\n", "YAML syntax error at line"),
        ("bus:\n  typo: 1\n", "bus.typo: unknown key"),
        (
            "micro_batch:\n  window_ms: fast\n",
            "micro_batch.window_ms: Input should be a valid integer",
        ),
        (
            "micro_batch:\n  window_ms: 100\n",
            "micro_batch.window_ms: Input should be greater than or equal to 500",
        ),
        (
            "bus:\n  redis:\n    uri: ${UNSET_VAR_FOR_TEST}\n",
            "bus.redis.uri: environment variable UNSET_VAR_FOR_TEST is not set",
        ),
        ("bus:\n  type: rabbit\n", "bus.type: Input should be 'redis' or 'kafka'"),
        ("- 1\n- 2\n", "expected a mapping at the top level"),
        ("features:\n  windows:\n    - {name: x}\n", "give exactly one of 'horizon'"),
        ("features:\n  windows:\n    - {name: x, horizon: soon}\n", "expected a duration like"),
        (
            "store:\n  dsn: mysql://x\n",
            "store.dsn: Value error, expected a postgresql:// DSN".replace("Value error, ", ""),
        ),
    ],
)
def test_bad_config_is_one_readable_line(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(str(path))
    assert expected in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: file not found"):
        load_config(tmp_path / "missing.yaml", env={})


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), env={}) == AppConfig()


def test_config_is_frozen() -> None:
    cfg = AppConfig()
    with pytest.raises(Exception, match="frozen"):
        cfg.bus = cfg.bus  # type: ignore[misc]
