"""What the engine holds per window and series: the :class:`Feature` interface every built-in
feature implements, and :class:`PluginFeature`, a feature plugin's instance behind the same
interface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from market_data_core.contracts import Bar, QuoteBar
from market_data_core.errors import InferenceError
from market_data_pipeline.features.spec import PluginSpec, WindowSpec

__all__ = ["Feature", "PluginFeature"]


class Feature:
    """One window's state. ``on_bar``/``on_quote``/``on_quote_bar`` update it; ``values``
    yields its outputs."""

    __slots__ = ("outputs", "spec")

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self.outputs = spec.outputs

    def on_bar(self, ts_us: int, bar: Bar, log_ret: float | None) -> None:
        return

    def on_quote(
        self,
        ts_us: int,
        bid: float,
        ask: float,
        bid_size: float | None,
        ask_size: float | None,
        same_instant: bool,
    ) -> None:
        return

    def on_quote_bar(self, ts_us: int, quote: QuoteBar | None) -> None:
        return

    def values(self) -> tuple[float, ...]:
        raise NotImplementedError

    def state(self) -> list[Any]:
        """Everything the next outputs depend on, as plain lists, ints and floats (a copy)."""
        raise NotImplementedError

    def load(self, state: Sequence[Any]) -> None:
        """Replace the state with one from :meth:`state` of a feature of the same spec."""
        raise NotImplementedError


class PluginFeature:
    """A feature plugin's instance for one series, behind the same interface as the built-in
    features (its errors become ``InferenceError`` naming the plugin and the bar)."""

    __slots__ = ("outputs", "plugin", "spec")

    def __init__(self, spec: PluginSpec) -> None:
        self.spec = spec
        self.outputs = spec.outputs
        self.plugin = spec.new()

    def _failed(self, what: str, exc: Exception) -> InferenceError:
        return InferenceError(
            f"feature plugin {self.spec.name!r} ({self.spec.ref}) failed in {what} "
            f"({type(exc).__name__}: {exc})"
        )

    def on_bar(self, ts_us: int, bar: Bar, log_ret: float | None) -> None:
        try:
            self.plugin.on_bar(bar)
        except Exception as exc:  # user code
            raise self._failed(f"on_bar of {bar.provider}|{bar.symbol} {bar.ts}", exc) from exc

    def values(self) -> tuple[float, ...]:
        try:
            out = tuple(float(x) for x in self.plugin.values())
        except Exception as exc:  # user code
            raise self._failed("values", exc) from exc
        if len(out) != len(self.outputs):
            raise InferenceError(
                f"feature plugin {self.spec.name!r} ({self.spec.ref}): values() gave "
                f"{len(out)} numbers for {len(self.outputs)} outputs"
            )
        return out

    def state(self) -> list[Any]:
        try:
            return list(self.plugin.export_state())
        except Exception as exc:  # user code
            raise self._failed("export_state", exc) from exc

    def load(self, state: Sequence[Any]) -> None:
        try:
            self.plugin.import_state(state)
        except Exception as exc:  # user code: a state that does not fit is a ValueError
            raise ValueError(f"feature plugin {self.spec.name!r}: {exc}") from exc
