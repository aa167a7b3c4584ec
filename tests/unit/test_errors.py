"""The error tree drawn in market_data_core/errors.py is complete and true: every exception
class defined in mdp's packages is in it, under its real base class; errors carry their data."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys

import pytest

import market_data_core.errors as errors_module
from market_data_core.config import AppConfig, BusConfig
from market_data_core.errors import BusError, ConfigError
from market_data_pipeline.inference.expr import ExprError, parse_condition
from market_data_pipeline.servers import ServerUrls
from market_data_pipeline.streaming import open_bus

PACKAGES = ("market_data_core", "market_data_pipeline", "market_data_store")
# Alembic runs it inside its own context (it reads alembic.context.config at import); it
# defines no exception.
NOT_IMPORTABLE_ALONE = {"market_data_store.migrations.env"}
_NODE = re.compile(r"^(?P<indent>[ │├└─]*)(?P<name>_?[A-Z][A-Za-z]*)\b")


def drawn_tree() -> dict[str, str]:
    """``{class name: drawn parent}`` from the docstring's diagrams; a root (``MDPError``,
    ``Exception`` of the private signals) stands under ``Exception``."""
    assert errors_module.__doc__ is not None
    parents: dict[str, str] = {}
    for block in errors_module.__doc__.split("::")[1:]:
        stack: list[tuple[int, str]] = []
        for raw in block.splitlines():
            line = raw[4:] if raw.startswith("    ") else None
            if not line:
                if stack and raw.strip() and not raw.startswith(" "):
                    break  # the prose after the diagram
                continue
            m = _NODE.match(line)
            if m is None:
                continue
            depth = len(m.group("indent"))
            while stack and stack[-1][0] >= depth:
                stack.pop()
            parents[m.group("name")] = stack[-1][1] if stack else "Exception"
            stack.append((depth, m.group("name")))
    return parents


def defined_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for package in PACKAGES:
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            if info.name in NOT_IMPORTABLE_ALONE:
                continue
            module = importlib.import_module(info.name)
            for obj in vars(module).values():
                if (
                    inspect.isclass(obj)
                    and issubclass(obj, BaseException)
                    and obj.__module__ == module.__name__
                ):
                    found[obj.__qualname__] = obj
    return found


def test_every_exception_class_is_drawn_under_its_base() -> None:
    tree = drawn_tree()
    defined = defined_exceptions()
    assert "BusError" in defined and "_RowParse" in defined  # the walk sees public and private
    missing = sorted(set(defined) - set(tree))
    assert not missing, f"exception classes not drawn in market_data_core/errors.py: {missing}"
    for name, cls in defined.items():
        bases = {b.__name__ for b in cls.__bases__}
        assert tree[name] in bases, f"{name} is drawn under {tree[name]!r}, its bases: {bases}"
    drawn_only = sorted(set(tree) - set(defined) - {"Exception"})  # Python's own base
    assert not drawn_only, f"drawn but defined nowhere: {drawn_only}"


def test_the_tree_parser_reads_nesting() -> None:
    tree = drawn_tree()
    assert tree["MDPError"] == "Exception"
    assert tree["StoreUnavailableError"] == "StoreError"
    assert tree["LocalTimeError"] == "ContractError"
    assert tree["BackpressureError"] == "MDPError"
    assert tree["_RelayBusy"] == "Exception"


async def test_a_bus_error_names_its_backend_and_operation() -> None:
    # nothing listens on port 1: the connect fails at once
    with pytest.raises(BusError) as info:
        await open_bus(AppConfig(), ServerUrls("redis://127.0.0.1:1/0", None, None))
    assert (info.value.backend, info.value.operation) == ("redis", "connect")
    assert isinstance(info.value.__cause__, Exception)  # the driver's error, kept


async def test_a_missing_kafka_client_is_a_kafka_connect_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "aiokafka", None)
    monkeypatch.delitem(sys.modules, "market_data_pipeline.streaming.kafka_bus", raising=False)
    with pytest.raises(BusError) as info:
        await open_bus(AppConfig(bus=BusConfig(type="kafka")), ServerUrls(None, None, "h:9"))
    assert (info.value.backend, info.value.operation) == ("kafka", "connect")


def test_a_bad_rule_condition_is_a_config_error_with_its_column() -> None:
    with pytest.raises(ConfigError) as info:
        parse_condition("rsi_14 >", ["rsi_14"])
    assert isinstance(info.value, ExprError) and isinstance(info.value, ValueError)
    assert info.value.column == 9
