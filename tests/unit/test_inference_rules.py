"""Rules: the safe expression language, load-time errors, edge/cooldown semantics, determinism."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from market_data_core.config import load_config
from market_data_core.contracts import Bar
from market_data_core.errors import ConfigError
from market_data_core.protocols import FeatureSnapshot
from market_data_pipeline.features import FeatureEngine
from market_data_pipeline.inference.adapters.rules import RulesAdapter, load_rules, parse_rules
from market_data_pipeline.inference.expr import ExprError, parse_condition
from market_data_pipeline.project import rules_file
from tests.conftest import DATA, ROOT, SHIPPED_CONFIG, SHIPPED_RULES

T0 = datetime(2024, 3, 1, tzinfo=UTC)
KNOWN = ["rsi", "momentum", "sma_fast", "sma_slow", "close", "volatility"]


def _snap(i: int, **values: float) -> FeatureSnapshot:
    return FeatureSnapshot("p", "S", T0 + timedelta(seconds=i), values, price=values.get("close"))


def _truth(text: str, memory_values: list[dict[str, float]]) -> list[bool]:
    expr = parse_condition(text, KNOWN)
    mem = expr.new_memory()
    return [expr.evaluate(v, mem) for v in memory_values]


@pytest.mark.parametrize(
    ("text", "values", "expected"),
    [
        ("rsi > 70", {"rsi": 71}, True),
        ("rsi > 70", {"rsi": 70}, False),
        ("rsi >= 70 and momentum < 0", {"rsi": 70, "momentum": -0.1}, True),
        ("not (rsi < 30 or rsi > 70)", {"rsi": 50}, True),
        ("abs(momentum) > 0.01", {"momentum": -0.02}, True),
        ("min(rsi, 40, 50) == 40", {"rsi": 45}, True),
        ("max(rsi, 40) == 45", {"rsi": 45}, True),
        ("-momentum * 2 + 1 > 1.03", {"momentum": -0.02}, True),
        ("(sma_fast - sma_slow) / sma_slow > 1e-3", {"sma_fast": 101, "sma_slow": 100}, True),
        ("30 < rsi < 70", {"rsi": 50}, True),
        ("30 < rsi < 70", {"rsi": 80}, False),
        ("2 - 3 - 4 == -5", {}, True),
        ("8 / 4 / 2 == 1", {}, True),
        ("1 + 2 * 3 == 7", {}, True),
        ("rsi > 70", {}, False),  # not ready: nan compares false
        ("rsi / 0 > 1", {"rsi": 5}, True),  # IEEE: +inf
        ("rsi / 0 > 1", {"rsi": 0}, False),  # nan
        ("true and not false", {}, True),
    ],
)
def test_expression_semantics(text: str, values: dict[str, float], expected: bool) -> None:
    assert _truth(text, [values]) == [expected]


def test_crosses_need_the_previous_snapshot() -> None:
    seq = [
        {"sma_fast": 1, "sma_slow": 2},
        {"sma_fast": 3, "sma_slow": 2},  # crosses above
        {"sma_fast": 4, "sma_slow": 2},
        {"sma_fast": 2, "sma_slow": 2},  # touches
        {"sma_fast": 3, "sma_slow": 2},  # crosses above again (from equal)
        {"sma_fast": 1, "sma_slow": 2},
    ]
    assert _truth("crosses_above(sma_fast, sma_slow)", seq) == [
        False,
        True,
        False,
        False,
        True,
        False,
    ]
    # touching (a == b) is not below: only the last step crosses below
    assert _truth("crosses_below(sma_fast, sma_slow)", seq) == [
        False,
        False,
        False,
        False,
        False,
        True,
    ]
    # the cross is tracked even when 'and' short-circuits before reaching it
    gated = [{**v, "rsi": 50.0 if i != 1 else 10.0} for i, v in enumerate(seq)]
    assert _truth("rsi > 20 and crosses_above(sma_fast, sma_slow)", gated)[4] is True
    # a first snapshot never crosses; nan (not ready) never crosses
    assert _truth("crosses_above(close, sma_slow)", [{"close": 5, "sma_slow": 1}]) == [False]
    nan_seq = [{"close": 1, "sma_slow": math.nan}, {"close": 2, "sma_slow": 1.5}]
    assert _truth("crosses_above(close, sma_slow)", nan_seq) == [False, False]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("__import__('os')", "names may not start with '_'"),
        ("__import__('os').system('true')", "names may not start with '_'"),
        ("rsi.__class__", "attribute access is not allowed"),
        ("(1).__class__.__bases__", "attribute access is not allowed"),
        ("lambda: 1", "'lambda' is not part of the rule language"),
        ("rsi[0] > 1", "subscripts are not allowed"),
        ("'abc' == 'abc'", "strings are not part of the rule language"),
        ('"x"', "strings are not part of the rule language"),
        ("open('/etc/passwd')", "unknown function 'open'"),
        ("eval(rsi)", "unknown function 'eval'"),
        ("rsi = 3", "assignment is not allowed"),
        ("rsi > 70; import os", "unexpected character ';'"),
        ("rsi if rsi else 1", "unexpected 'if'"),
        ("rsii > 70", "unknown feature 'rsii' (known: close, momentum, rsi, sma_fast"),
        ("rsi", "must be true or false"),
        ("rsi and 3", "'and' needs a true/false condition"),
        ("(rsi > 1) + 1", "'+' needs a number"),
        ("abs(rsi, 1) > 0", "abs() takes 1 arguments"),
        ("crosses_above(rsi) ", "takes 2 arguments"),
        ("abs > 1", "abs is a function"),
        ("rsi > ", "expected a number, a feature name or '('"),
        ("(rsi > 1", "expected ')'"),
        ("", "condition is empty"),
        ("(" * 200 + "rsi > 1" + ")" * 200, "nested more than"),
        ("1e999 > rsi", "out of range"),
    ],
)
def test_hostile_and_broken_conditions_are_rejected(text: str, message: str) -> None:
    with pytest.raises(ExprError) as info:
        parse_condition(text, KNOWN)
    assert message in str(info.value)


def test_hostile_rule_file_fails_at_load_with_the_rule_named(tmp_path: object) -> None:
    data = [
        {"name": "ok", "condition": "rsi > 70", "signal": 1, "score": 0.5},
        {
            "name": "evil",
            "condition": "__import__('os').system('rm -rf /')",
            "signal": 1,
            "score": 1,
        },
    ]
    with pytest.raises(ConfigError) as info:
        parse_rules(data, KNOWN, source="rules.yaml")
    text = str(info.value)
    assert text.startswith("rules.yaml: [1].condition: rule 'evil':")
    assert "names may not start with '_'" in text
    with pytest.raises(ConfigError, match=r"\[0\]\.when: unknown key"):
        parse_rules(
            [{"name": "x", "condition": "rsi > 1", "when": "x", "signal": 1, "score": 1}], KNOWN
        )
    with pytest.raises(ConfigError, match=r"\[0\]\.score: Input should be a finite number"):
        parse_rules([{"name": "x", "condition": "rsi > 1", "signal": 1, "score": "nan"}], KNOWN)
    with pytest.raises(ConfigError, match="duplicate rule name 'ok'"):
        parse_rules([data[0], data[0]], KNOWN)
    with pytest.raises(ConfigError, match=r"unknown feature 'vwap' \(known: close, momentum"):
        parse_rules([{"name": "x", "condition": "vwap > 1", "signal": 1, "score": 1}], KNOWN)


def test_shipped_rules_load_against_the_shipped_features() -> None:
    cfg = load_config(SHIPPED_CONFIG, env={})
    engine = FeatureEngine(cfg.features.windows)
    assert rules_file(cfg) == SHIPPED_RULES  # the shipped config names none: the shipped ones
    rules = load_rules(rules_file(cfg), engine.feature_names)
    names = [r.name for r in rules]
    assert names[:5] == [
        "price_momentum_up",
        "price_momentum_down",
        "high_volatility",
        "rsi_overbought",
        "rsi_oversold",
    ]
    assert "sma_cross_up" in names and "sma_cross_down" in names
    assert rules[names.index("sma_cross_up")].expr.source == "crosses_above(sma_fast, sma_slow)"


def _rules(**extra: object) -> RulesAdapter:
    rule = {"name": "hot", "condition": "rsi > 70", "signal": -1, "score": 0.7, **extra}
    return RulesAdapter(parse_rules([rule], KNOWN))


def test_edge_triggered_by_default() -> None:
    adapter = _rules()
    rsi = [50, 75, 80, 72, 60, 71, 90]
    fired = [bool(adapter.evaluate_sync(_snap(i, rsi=r))) for i, r in enumerate(rsi)]
    assert fired == [False, True, False, False, False, True, False]


def test_level_mode_fires_while_true() -> None:
    adapter = _rules(mode="level")
    rsi = [50, 75, 80, 60, 71]
    fired = [bool(adapter.evaluate_sync(_snap(i, rsi=r))) for i, r in enumerate(rsi)]
    assert fired == [False, True, True, False, True]


def test_cooldown_is_in_event_time_and_drops_edges_inside_it() -> None:
    adapter = _rules(cooldown_s=10)
    # seconds: edge at 1 fires; edge at 5 inside the cooldown is dropped; edge at 11 fires
    seq = [(0, 50), (1, 75), (2, 50), (5, 75), (6, 50), (11, 75), (12, 80)]
    fired = [t for t, r in seq if adapter.evaluate_sync(_snap(t, rsi=r))]
    assert fired == [1, 11]
    level = _rules(cooldown_s=10, mode="level")
    seq2 = [(0, 75), (3, 75), (9, 75), (10, 75), (15, 75), (20, 75)]
    assert [t for t, r in seq2 if level.evaluate_sync(_snap(t, rsi=r))] == [0, 10, 20]


def test_state_is_per_symbol_and_stale_snapshots_are_ignored() -> None:
    adapter = _rules()
    a = adapter.evaluate_sync(FeatureSnapshot("p", "A", T0, {"rsi": 80}))
    b = adapter.evaluate_sync(FeatureSnapshot("p", "B", T0, {"rsi": 80}))
    assert len(a) == len(b) == 1 and a[0].symbol == "A" and b[0].symbol == "B"
    again = adapter.evaluate_sync(FeatureSnapshot("p", "A", T0, {"rsi": 10}))
    assert again == []
    signal = a[0]
    assert signal.signal_id == f"p|A|{T0.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}|hot|rules"
    assert signal.value == -1 and signal.score == 0.7
    assert signal.meta["features"] == {"rsi": 80}


def _replay_signals() -> list[tuple[str, str, float]]:
    cfg = load_config(SHIPPED_CONFIG, env={})
    engine = FeatureEngine(cfg.features.windows, timed=False)
    adapter = RulesAdapter(load_rules(SHIPPED_RULES, engine.feature_names))
    df = pd.read_csv(DATA / "ftx-btc-perp-1m-2022-01.csv", nrows=8000)
    out = []
    for row in df.itertuples():
        ts = datetime.fromisoformat(row.timestamp).replace(tzinfo=UTC)
        bar = Bar("ftx", "BTC-PERP", "1m", ts, row.open, row.high, row.low, row.close, row.volume)
        snap = engine.update_bar(bar)
        assert snap is not None
        out.extend((s.signal_id, s.name, s.value) for s in adapter.evaluate_sync(snap))
    return out


def test_same_bars_give_the_same_signals_twice() -> None:
    first = _replay_signals()
    second = _replay_signals()
    assert first == second
    names = {name for _, name, _ in first}
    # real BTC minutes exercise most of the shipped rules
    assert {"rsi_overbought", "rsi_oversold", "sma_cross_up", "sma_cross_down"} <= names
    assert len({sid for sid, _, _ in first}) == len(first)


def test_the_rule_code_never_calls_eval_exec_or_compile() -> None:
    import ast

    banned = {"eval", "exec", "compile", "literal_eval", "__import__", "getattr"}
    for rel in ("inference/expr.py", "inference/adapters/rules.py", "inference/engine.py"):
        tree = ast.parse((ROOT / "market_data_pipeline" / rel).read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name not in banned:
                continue
            # the one allowed: re.compile of the tokenizer's own constant pattern
            is_regex = (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id == "re"
                and name == "compile"
                and isinstance(node.args[0], ast.Constant)
            )
            assert is_regex, f"{rel}:{node.lineno} calls {name}()"
