"""The raw series registry: ``raw_series`` maps each ``series_key`` to one (provider, symbol).

The raw tables lead their key with ``series_key``, a 64-bit hash of ``(provider, symbol)``
(:func:`~market_data_store._schema_names.series_key`). Reads of one series match only
``series_key`` (comparing the text columns on every row scanned cost the bar recompute
~40 % more time per call), which is exact because no two series share a key: every writer
registers a series here before its first raw row, and ``raw_series`` has both ``series_key``
and ``(provider, symbol)`` unique, so a second series with the key of a registered one is
refused with :class:`~market_data_core.errors.StoreError` (it would take 2**32 series for even
odds of one such pair) instead of being mixed into the first one's bars. For the same reason
the raw tables' key ``(series_key, ts, seq)`` (migration ``0013``) is unique exactly as
``(provider, symbol, ts, seq)`` is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from market_data_core.errors import StoreError
from market_data_store._schema_names import series_key

__all__ = ["SeriesRegistry"]

_REGISTER_SQL = f"""
INSERT INTO raw_series (series_key, provider, symbol)
SELECT DISTINCT {series_key("s.provider", "s.symbol")}, s.provider, s.symbol
FROM unnest($1::text[], $2::text[]) AS s(provider, symbol)
ON CONFLICT DO NOTHING
"""
# After the insert, in a statement of its own (a new snapshot: it sees a series another
# writer registered concurrently, whose insert ours waited for): each series' key and the
# series registered under it (another series' on a collision).
_KEYS_SQL = f"""
SELECT s.provider, s.symbol, r.series_key, r.provider AS holder_provider,
       r.symbol AS holder_symbol
FROM unnest($1::text[], $2::text[]) AS s(provider, symbol)
JOIN raw_series r ON r.series_key = {series_key("s.provider", "s.symbol")}
"""


class SeriesRegistry:
    """Registers series in ``raw_series`` once per client, and keeps the ``series_key`` of
    each (rows of ``raw_series`` are never deleted, and a key is a function of its series):
    the writers send it with every raw row (a ``CHECK`` holds it to the hash)."""

    def __init__(self) -> None:
        self._keys: dict[tuple[str, str], int] = {}

    @property
    def keys(self) -> dict[tuple[str, str], int]:
        """``series_key`` of every ``(provider, symbol)`` registered by :meth:`ensure`."""
        return self._keys

    async def ensure(self, pool: Any, series: Iterable[tuple[str, str]]) -> None:
        """Register every ``(provider, symbol)`` of ``series`` not registered yet and learn
        its key (one round trip for all of them, none when all are known). Raises
        ``StoreError`` naming the series when one's key is held by another series."""
        new = sorted(set(series) - self._keys.keys())
        if not new:
            return
        providers = [p for p, _ in new]
        symbols = [s for _, s in new]
        async with pool.acquire() as conn:
            await conn.execute(_REGISTER_SQL, providers, symbols)
            rows = await conn.fetch(_KEYS_SQL, providers, symbols)
        keys: dict[tuple[str, str], int] = {}
        for r in rows:
            if (r["holder_provider"], r["holder_symbol"]) != (r["provider"], r["symbol"]):
                raise StoreError(
                    f"series {r['provider']}/{r['symbol']} has the series key of "
                    f"{r['holder_provider']}/{r['holder_symbol']} (a 64-bit hash collision): "
                    "its raw rows cannot be stored apart; rename one of the symbols"
                )
            keys[(r["provider"], r["symbol"])] = int(r["series_key"])
        missing = [s for s in new if s not in keys]
        if missing:  # raw_series rows are never deleted: the schema changed under us
            raise StoreError(f"series {missing[0][0]}/{missing[0][1]} is not in raw_series")
        self._keys.update(keys)
