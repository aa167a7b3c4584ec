"""The rules adapter: ``configs/rules.yaml`` conditions over feature snapshots.

File format (the seed's, plus two optional keys)::

    - name: "price_momentum_up"
      condition: "momentum > 0.01"       # the safe expression language of inference.expr
      signal: 1.0                        # Signal.value
      score: 0.8                         # Signal.score
      cooldown_s: 0                      # optional: event-time seconds between two signals
      mode: edge                         # optional: edge (default) | level

Everything is checked at load (unknown keys, types, the condition's syntax, unknown feature
names listing the known ones): a bad file is one :class:`ConfigError` naming the file and rule.

Semantics, per (provider, symbol) and rule, in event time so a replay gives the same signals:

- ``edge``: emit when the condition becomes true (false or not yet evaluated at the previous
  snapshot, true now). An edge inside the cooldown is dropped, not deferred.
- ``level``: emit at every snapshot where the condition is true, at most once per cooldown.
- ``cooldown_s``: after a signal at ``ts``, nothing before ``ts + cooldown_s``.
- A snapshot whose ``ts`` is not after the previous one for the symbol is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from market_data_core.contracts import Signal
from market_data_core.errors import ConfigError
from market_data_core.protocols import FeatureSnapshot
from market_data_core.timeutil import to_epoch_us
from market_data_pipeline.inference.expr import CrossMemory, Expr, ExprError, parse_condition

__all__ = ["Rule", "RuleConfig", "RulesAdapter", "load_rules", "parse_rules"]


class RuleConfig(BaseModel):
    """One entry of ``rules.yaml``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$")
    condition: str
    signal: float = Field(allow_inf_nan=False)
    score: float = Field(allow_inf_nan=False)
    cooldown_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    mode: Literal["edge", "level"] = "edge"


@dataclass(frozen=True, slots=True)
class Rule:
    config: RuleConfig
    expr: Expr

    @property
    def name(self) -> str:
        return self.config.name


def parse_rules(data: Any, known_features: Sequence[str], *, source: str = "<rules>") -> list[Rule]:
    """Validate parsed YAML (a list of rules). Raises only :class:`ConfigError`."""
    if not isinstance(data, list):
        raise ConfigError(
            f"expected a list of rules, got {type(data).__name__}",
            source=source,
        )
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, item in enumerate(data):
        try:
            cfg = RuleConfig.model_validate(item)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            raise ConfigError(
                msg, source=source, key_path=f"[{i}].{loc}" if loc else f"[{i}]"
            ) from None
        if cfg.name in seen:
            raise ConfigError(f"duplicate rule name {cfg.name!r}", source=source, key_path=f"[{i}]")
        seen.add(cfg.name)
        try:
            expr = parse_condition(cfg.condition, known_features)
        except ExprError as exc:
            raise ConfigError(
                f"rule {cfg.name!r}: {exc}", source=source, key_path=f"[{i}].condition"
            ) from None
        rules.append(Rule(cfg, expr))
    return rules


def load_rules(path: str | Path, known_features: Sequence[str]) -> list[Rule]:
    """Read and validate a rules file. Raises only :class:`ConfigError`."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("rules file not found", source=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read rules file ({exc})", source=source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML syntax error: {str(exc).splitlines()[0]}", source=source) from None
    return parse_rules(data, known_features, source=source)


class _RuleState:
    __slots__ = ("last_fire_us", "last_true", "memory")

    def __init__(self, memory: CrossMemory) -> None:
        self.memory = memory
        self.last_true = False
        self.last_fire_us: int | None = None


class RulesAdapter:
    """Evaluates rules on snapshots; deterministic for a given sequence of snapshots."""

    def __init__(self, rules: Sequence[Rule], *, adapter_name: Literal["rules"] = "rules") -> None:
        self.rules = list(rules)
        self._state: dict[tuple[str, str], list[_RuleState]] = {}
        self._last_ts: dict[tuple[str, str], int] = {}
        self._adapter: Literal["rules"] = adapter_name

    @property
    def name(self) -> Literal["rules"]:
        return "rules"

    def evaluate_sync(self, snapshot: FeatureSnapshot) -> list[Signal]:
        key = (snapshot.provider, snapshot.symbol)
        ts_us = to_epoch_us(snapshot.ts)
        last = self._last_ts.get(key)
        if last is not None and ts_us <= last:
            return []
        self._last_ts[key] = ts_us
        states = self._state.get(key)
        if states is None:
            states = self._state[key] = [_RuleState(r.expr.new_memory()) for r in self.rules]
        out: list[Signal] = []
        values = snapshot.values
        for rule, st in zip(self.rules, states, strict=True):
            true_now = rule.expr.evaluate(values, st.memory)
            was_true = st.last_true
            st.last_true = true_now
            if not true_now or (rule.config.mode == "edge" and was_true):
                continue
            cooldown_us = int(rule.config.cooldown_s * 1_000_000)
            if st.last_fire_us is not None and ts_us < st.last_fire_us + cooldown_us:
                continue
            st.last_fire_us = ts_us
            out.append(self._signal(rule, snapshot, values))
        return out

    def _signal(self, rule: Rule, snapshot: FeatureSnapshot, values: Mapping[str, float]) -> Signal:
        features = {n: values[n] for n in sorted(rule.expr.names) if n in values}
        meta: dict[str, Any] = {"rule": rule.name, "condition": rule.expr.source}
        meta["features"] = {k: v for k, v in features.items() if v == v and abs(v) != float("inf")}
        if snapshot.price is not None:
            meta["price"] = snapshot.price
        return Signal(
            provider=snapshot.provider,
            symbol=snapshot.symbol,
            ts=snapshot.ts,
            name=rule.name,
            value=rule.config.signal,
            score=rule.config.score,
            meta=meta,
            adapter=self._adapter,
        )

    async def evaluate(self, snapshot: FeatureSnapshot) -> list[Signal]:
        return self.evaluate_sync(snapshot)

    def observe(self, snapshot: FeatureSnapshot) -> None:
        """Advance edge/cooldown/cross state without emitting (warm-up)."""
        self.evaluate_sync(snapshot)

    def identity(self) -> list[Any]:
        """What the signals depend on besides the snapshots: the rules, as configured."""
        return [r.config.model_dump(mode="json") for r in self.rules]

    def export_state(self, key: tuple[str, str]) -> list[Any]:
        """The symbol's edge, cooldown and cross state as plain lists (``[]``: none yet)."""
        states = self._state.get(key)
        last = self._last_ts.get(key)
        if states is None and last is None:
            return []
        return [
            last,
            [[st.memory.previous[:], st.last_true, st.last_fire_us] for st in states or []],
        ]

    def import_state(self, key: tuple[str, str], state: Sequence[Any]) -> None:
        """Replace the symbol's state with one from :meth:`export_state` of the same rules.
        Raises ``ValueError`` when it does not fit them."""
        self.forget(key)
        if not state:
            return
        last, rules = state
        if last is not None:
            self._last_ts[key] = int(last)
        if not rules:
            return
        if len(rules) != len(self.rules):
            raise ValueError(f"a rules state of {len(rules)} rules does not fit {len(self.rules)}")
        states = []
        for rule, (previous, last_true, last_fire_us) in zip(self.rules, rules, strict=True):
            st = _RuleState(rule.expr.new_memory())
            if len(previous) != len(st.memory.previous):
                raise ValueError(f"rule {rule.name!r}: the state does not fit its condition")
            st.memory.previous = [float(x) for x in previous]
            st.last_true = bool(last_true)
            st.last_fire_us = None if last_fire_us is None else int(last_fire_us)
            states.append(st)
        self._state[key] = states

    def forget(self, key: tuple[str, str]) -> None:
        self._state.pop(key, None)
        self._last_ts.pop(key, None)

    async def aclose(self) -> None:
        return None
