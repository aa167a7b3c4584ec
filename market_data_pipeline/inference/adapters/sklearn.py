"""The scikit-learn adapter: a pinned model file, predictions in a worker pool with a timeout,
and a circuit breaker that falls back to the rules adapter.

Loading (all failures are ``ConfigError``, so ``mdp`` exits 2 with one line):

- ``model_path`` is read once; its SHA-256 must equal ``sha256`` in the config, or the file is
  refused *before* it is unpickled (a model file is code: pinning it by hash is the defence).
- The feature order is the model's ``feature_names_in_`` (train on a DataFrame); every name
  must be a known feature.

Evaluation: the rules adapter sees every snapshot (so its edge/cooldown state is current when it
has to take over). While the breaker is closed, ``predict_proba`` (or ``predict``) runs in a
``ThreadPoolExecutor`` bounded by ``timeout_ms``. The model's probability of the last class
(``p_up`` for a 0/1 classifier) gives a direction: +1 if ``p_up >= threshold``, -1 if
``p_up <= 1 - threshold``, else 0; a signal ``signal_name`` is emitted when the direction of a
symbol changes to +1 or -1 (edge-triggered, like the rules), ``score`` = that direction's
probability. A snapshot with a feature that is not ready (``nan``) or infinite is skipped.

Breaker: ``breaker_failures`` consecutive failures (timeout or exception) open it; while open,
the rules' signals are returned (``adapter="rules"``) and no prediction is tried; after
``breaker_reset_s`` one trial prediction is let through (half-open): success closes it, failure
opens it again. Opening logs a warning and counts ``errors_total{component="inference",
reason="breaker_open"}``; each failure counts ``reason="timeout"`` or ``"predict_error"``.
A timed-out prediction cannot be interrupted; its worker thread finishes in the background,
and the open breaker stops new work piling up behind it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from market_data_core.config import SklearnAdapterConfig
from market_data_core.contracts import Signal
from market_data_core.errors import ConfigError
from market_data_core.protocols import FeatureSnapshot
from market_data_pipeline import telemetry
from market_data_pipeline.inference.adapters.rules import RulesAdapter

__all__ = ["CircuitBreaker", "SklearnAdapter", "file_sha256"]

log = logging.getLogger(__name__)
_KEY = "inference.adapters.sklearn"


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CircuitBreaker:
    """closed -> (``failures`` in a row) -> open -> (``reset_s``) -> half-open -> closed|open."""

    def __init__(
        self, failures: int, reset_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures = failures
        self.reset_s = reset_s
        self._clock = clock
        self.state: Literal["closed", "open", "half_open"] = "closed"
        self.consecutive = 0
        self.opened_at = 0.0

    def allow(self) -> bool:
        """May a call go through now? Moves open -> half-open once ``reset_s`` has passed."""
        if self.state == "open" and self._clock() - self.opened_at >= self.reset_s:
            self.state = "half_open"
            return True
        return self.state == "closed"

    def success(self) -> None:
        self.state = "closed"
        self.consecutive = 0

    def failure(self) -> bool:
        """Record a failure; True if this opened the breaker."""
        self.consecutive += 1
        if self.state == "half_open" or (
            self.state == "closed" and self.consecutive >= self.failures
        ):
            self.state = "open"
            self.opened_at = self._clock()
            return True
        return False


def _load_model(config: SklearnAdapterConfig, base_dir: Path) -> tuple[Any, str]:
    if not config.model_path:
        raise ConfigError("model_path is empty", key_path=f"{_KEY}.model_path")
    path = Path(config.model_path)
    if not path.is_absolute():
        path = base_dir / path
    want = config.sha256.strip().lower()
    if not want:
        raise ConfigError(
            f"sha256 is empty: pin the model file (sha256sum {config.model_path})",
            key_path=f"{_KEY}.sha256",
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read model file {path} ({exc.strerror or exc})",
            key_path=f"{_KEY}.model_path",
        ) from None
    got = file_sha256(data)
    if got != want:
        raise ConfigError(
            f"model file {path} has SHA-256 {got}, config pins {want}: refusing to load it",
            key_path=f"{_KEY}.sha256",
        )
    try:
        import joblib  # the 'ml' extra; imported only when a model is configured
    except ImportError:
        raise ConfigError(
            "the sklearn adapter needs the ml extra: pip install 'mdp-streaming[ml]'",
            key_path=f"{_KEY}.model_path",
        ) from None

    try:
        # unpickle the bytes that were hashed, not the path again (no swap in between)
        model = joblib.load(io.BytesIO(data))
    except Exception as exc:  # unpickling can raise anything the pickled code raises
        raise ConfigError(
            f"cannot load model file {path}: {exc.__class__.__name__}: {exc}",
            key_path=f"{_KEY}.model_path",
        ) from None
    return model, got


class SklearnAdapter:
    """A pinned scikit-learn model with a rules fallback (see the module docstring)."""

    def __init__(
        self,
        config: SklearnAdapterConfig,
        fallback: RulesAdapter,
        known_features: Sequence[str],
        *,
        base_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.fallback = fallback
        self.model, self.sha256 = _load_model(config, base_dir or Path.cwd())
        names = getattr(self.model, "feature_names_in_", None)
        if names is None:
            raise ConfigError(
                "the model has no feature_names_in_: fit it on a DataFrame whose columns are "
                "feature names",
                key_path=f"{_KEY}.model_path",
            )
        self.feature_order: tuple[str, ...] = tuple(str(n) for n in names)
        unknown = [n for n in self.feature_order if n not in set(known_features)]
        if unknown:
            raise ConfigError(
                f"the model uses unknown feature(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known_features))})",
                key_path=f"{_KEY}.model_path",
            )
        self._proba = hasattr(self.model, "predict_proba")
        # imported here, not in the first prediction (whose timeout it would eat); the model
        # was fitted on named columns, so it is given a DataFrame with the same names
        import pandas  # type: ignore[import-untyped]

        self._frame: Callable[..., Any] = pandas.DataFrame
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_reset_s, clock=clock)
        self._pool = ThreadPoolExecutor(
            max_workers=config.workers, thread_name_prefix="mdp-sklearn"
        )
        self._direction: dict[tuple[str, str], int] = {}
        self._observed: dict[tuple[str, str], list[float]] = {}
        self._timeout_s = config.timeout_ms / 1000.0

    @property
    def name(self) -> Literal["sklearn"]:
        return "sklearn"

    def _predict(self, row: list[float]) -> float:
        frame = self._frame([row], columns=list(self.feature_order))
        if self._proba:
            proba = self.model.predict_proba(frame)
            return float(proba[0][-1])
        return float(self.model.predict(frame)[0])

    def _row(self, snapshot: FeatureSnapshot) -> list[float] | None:
        row = [snapshot.values.get(n, math.nan) for n in self.feature_order]
        return row if all(math.isfinite(x) for x in row) else None

    def observe(self, snapshot: FeatureSnapshot) -> None:
        """Warm-up: advance the fallback's state and remember the symbol's last scorable row.

        The model is stateless, but the edge ("direction changed") needs the previous bar's
        direction: the first evaluation after a warm-up predicts that row once first, so a
        restarted engine emits exactly what an uninterrupted one would.
        """
        self.fallback.observe(snapshot)
        row = self._row(snapshot)
        if row is not None:
            key = (snapshot.provider, snapshot.symbol)
            self._observed[key] = row
            self._direction.pop(key, None)

    def identity(self) -> list[Any]:
        """The model (by hash), how its output becomes signals, and the fallback rules."""
        return [
            self.sha256,
            self.config.model_dump(mode="json", include={"signal_name", "threshold"}),
            self.fallback.identity(),
        ]

    def export_state(self, key: tuple[str, str]) -> list[Any]:
        """The fallback's state, the symbol's last direction and its remembered row."""
        fallback = self.fallback.export_state(key)
        direction = self._direction.get(key)
        observed = self._observed.get(key)
        if not fallback and direction is None and observed is None:
            return []
        return [fallback, direction, None if observed is None else observed[:]]

    def import_state(self, key: tuple[str, str], state: Sequence[Any]) -> None:
        """Replace the symbol's state with one from :meth:`export_state`."""
        self.forget(key)
        if not state:
            return
        fallback, direction, observed = state
        self.fallback.import_state(key, fallback)
        if direction is not None:
            self._direction[key] = int(direction)
        if observed is not None:
            self._observed[key] = [float(x) for x in observed]

    def forget(self, key: tuple[str, str]) -> None:
        self.fallback.forget(key)
        self._direction.pop(key, None)
        self._observed.pop(key, None)

    async def evaluate(self, snapshot: FeatureSnapshot) -> list[Signal]:
        fallback_signals = self.fallback.evaluate_sync(snapshot)
        row = self._row(snapshot)
        if row is None:
            return [] if self.breaker.state == "closed" else fallback_signals
        if not self.breaker.allow():
            return fallback_signals
        key = (snapshot.provider, snapshot.symbol)
        previous = self._observed.pop(key, None)
        if previous is not None:
            p_previous = await self._guarded_predict(previous, snapshot)
            if p_previous is None:
                return fallback_signals
            self._direction[key] = self._direction_of(p_previous)
        p_up = await self._guarded_predict(row, snapshot)
        if p_up is None:
            return fallback_signals
        return self._signals(snapshot, p_up, row)

    async def _guarded_predict(self, row: list[float], snapshot: FeatureSnapshot) -> float | None:
        """A prediction within the timeout, or ``None`` (failure recorded on the breaker)."""
        loop = asyncio.get_running_loop()
        try:
            p_up = await asyncio.wait_for(
                loop.run_in_executor(self._pool, self._predict, row), self._timeout_s
            )
        except TimeoutError:
            self._failed(snapshot, "timeout", f"prediction took longer than {self._timeout_s}s")
            return None
        except Exception as exc:  # whatever the model raises is a model failure
            self._failed(snapshot, "predict_error", f"{exc.__class__.__name__}: {exc}")
            return None
        if self.breaker.state != "closed":
            log.info("sklearn model answered again: circuit breaker closed, model signals resume")
        self.breaker.success()
        return p_up

    def _direction_of(self, p_up: float) -> int:
        threshold = self.config.threshold
        if not math.isfinite(p_up):
            return 0
        return 1 if p_up >= threshold else -1 if p_up <= 1.0 - threshold else 0

    def _failed(self, snapshot: FeatureSnapshot, reason: str, detail: str) -> None:
        telemetry.ERRORS.labels(component="inference", reason=reason).inc()
        if self.breaker.failure():
            telemetry.ERRORS.labels(component="inference", reason="breaker_open").inc()
            log.warning(
                "sklearn circuit breaker OPEN after %s (%s, %s %s): falling back to rules for "
                "%.1fs",
                reason,
                detail,
                snapshot.symbol,
                snapshot.ts.isoformat(),
                self.breaker.reset_s,
            )

    def _signals(self, snapshot: FeatureSnapshot, p_up: float, row: list[float]) -> list[Signal]:
        if not math.isfinite(p_up):
            return []
        direction = self._direction_of(p_up)
        key = (snapshot.provider, snapshot.symbol)
        previous = self._direction.get(key, 0)
        self._direction[key] = direction
        if direction == 0 or direction == previous:
            return []
        return [
            Signal(
                provider=snapshot.provider,
                symbol=snapshot.symbol,
                ts=snapshot.ts,
                name=self.config.signal_name,
                value=float(direction),
                score=p_up if direction > 0 else 1.0 - p_up,
                meta={
                    "p_up": p_up,
                    "model_sha256": self.sha256[:16],
                    "features": dict(zip(self.feature_order, row, strict=True)),
                    **({"price": snapshot.price} if snapshot.price is not None else {}),
                },
                adapter="sklearn",
            )
        ]

    async def aclose(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
