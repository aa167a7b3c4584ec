"""The fold's sequential sums (``market_data_store._quote_fold._seq_sums``) add one term after
the other, as PostgreSQL's ``sum(float8)`` does, whichever way the windows are split: every
window on its own, all in lockstep, or the split the cost estimate picks. (The folded bars
against the recompute statement itself: ``tests/integration/test_quote_fold.py``.)"""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from market_data_store._quote_fold import _seq_sums

WAYS = {"chosen": {}, "one by one": {"per_window": 0.0}, "lockstep": {"per_step": 0.0}}


def _term(rng: random.Random) -> float:
    roll = rng.random()
    if roll < 0.1:
        return -0.0
    if roll < 0.15:
        return 0.0
    return rng.choice((-1, 1)) * rng.uniform(0, 1) * 10 ** rng.randint(-8, 8)


def _reference(first: float | None, terms: list[float]) -> float | None:
    """PostgreSQL's ``sum(float8)``: the first value is the state, each next one added."""
    acc = first
    for x in terms:
        acc = x if acc is None else acc + x
    return acc


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


@pytest.mark.parametrize("way", list(WAYS))
@pytest.mark.parametrize("seed", range(5))
def test_sums_add_one_term_after_the_other(seed: int, way: str) -> None:
    rng = random.Random(seed)
    lengths = [
        rng.choice((0, 1, 2, rng.randrange(3, 20), rng.randrange(20, 400))) for _ in range(60)
    ]
    terms = [_term(rng) for _ in range(sum(lengths))]
    starts = np.cumsum([0, *lengths[:-1]]).astype(np.intp)
    ends = starts + np.asarray(lengths, np.intp)
    has_first = np.array([rng.random() < 0.5 for _ in lengths])
    first = np.array([_term(rng) for _ in lengths])
    sums, started = _seq_sums(np.array(terms), starts, ends, first, has_first, **WAYS[way])
    pairwise_differs = False
    for i, (lo, hi) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        want = _reference(float(first[i]) if has_first[i] else None, terms[lo:hi])
        assert bool(started[i]) == (want is not None)
        if want is not None:
            assert _bits(float(sums[i])) == _bits(want), (i, lo, hi)
            pairwise_differs |= hi - lo > 16 and float(np.sum(terms[lo:hi])) != _reference(
                None, terms[lo:hi]
            )
    assert pairwise_differs, "the data must tell a sequential sum from numpy.sum's pairwise one"


@pytest.mark.parametrize("way", list(WAYS))
def test_a_negative_zero_first_term_stays_negative_zero(way: str) -> None:
    # PostgreSQL takes the first value as the state: -0.0, not 0.0 + -0.0 = 0.0
    terms = np.array([-0.0, -0.0, -0.0])
    starts = np.array([0, 1, 3], np.intp)
    ends = np.array([1, 3, 3], np.intp)
    first = np.array([0.0, 0.0, -0.0])
    has_first = np.array([False, False, True])
    sums, started = _seq_sums(terms, starts, ends, first, has_first, **WAYS[way])
    assert [_bits(x) for x in sums.tolist()] == [_bits(-0.0)] * 3
    assert started.tolist() == [True, True, True]


def test_rows_postgres_would_raise_on_are_found() -> None:
    """``_book_terms(...).raises``: the rows whose float8 operations overflow (or divide by
    0) in PostgreSQL."""
    from market_data_store._quote_fold import _book_terms

    rows = [  # bid, ask, bid_size, ask_size, both sizes known, d, raises
        (100.0, 100.5, 10.0, 5.0, True, 1000.0, False),
        (100.0, 100.5, 0.0, 0.0, True, 1000.0, False),  # imbalance null, no division
        (100.0, 100.5, 1e308, 1e308, False, 1000.0, False),  # sizes not both known: not added
        (1e308, 1e308, 10.0, 5.0, True, 1000.0, True),  # bid + ask
        (100.0, 100.5, 1e308, 1e308, True, 1000.0, True),  # bid_size + ask_size
        (0.0, 0.0, 10.0, 5.0, True, 1000.0, True),  # (ask + bid) / 2 = 0: division by zero
        (1e-300, 1e300, 10.0, 5.0, True, 1e305, True),  # spread * d
    ]
    cols = list(zip(*rows, strict=True))
    got = _book_terms(
        np.array(cols[0]),
        np.array(cols[1]),
        np.array(cols[2]),
        np.array(cols[3]),
        np.array(cols[4]),
        np.array(cols[5]),
    ).raises
    assert got.tolist() == list(cols[6])
