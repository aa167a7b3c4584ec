"""Held entries: an entry is acknowledged once, exactly when the last of its events is
committed, whatever windows and commits its events are spread over; until then it is held
(renewed, handed back on a clean stop) and a redelivery of it is not a new arrival."""

from __future__ import annotations

import numpy as np

from market_data_core.protocols import BusRecord
from market_data_pipeline.consumers.batch_state import HeldEntries, Hold, PolledEntries


def _records(specs: list[tuple[int, str]], deliveries: int = 1) -> list[BusRecord]:
    return [BusRecord("mdp.events", shard, entry_id, b"x", deliveries) for shard, entry_id in specs]


def _hold(poll_entries: list[int], counts: list[int], poll: PolledEntries) -> Hold:
    return (poll, np.array(poll_entries, np.intp), np.array(counts, np.int64))


def test_an_entry_is_acked_once_when_its_last_event_commits() -> None:
    held = HeldEntries()
    records = _records([(0, "1-0"), (0, "1-1"), (1, "1-0"), (1, "2-0")])
    poll = HeldEntries.poll(records)
    held.hold(poll, np.array([2, 0, 1, 3], np.int64))  # "1-1" of shard 0: nothing held
    assert len(held) == 3
    # entry 0's two events in two windows, entry 3's three in two
    window_a = _hold([0, 2, 3], [1, 1, 1], poll)
    window_b = _hold([0, 3], [1, 2], poll)
    assert held.commit([window_a]) == {1: ["1-0"]}
    assert len(held) == 2
    assert held.commit([window_b]) == {0: ["1-0"], 1: ["2-0"]}
    assert len(held) == 0 and held.records() == []
    # committing a window again (its entries are done) acks nothing twice
    assert held.commit([window_a, window_b]) == {}


def test_two_windows_of_one_commit_and_several_polls() -> None:
    held = HeldEntries()
    first = HeldEntries.poll(_records([(0, "1-0"), (0, "1-1")]))
    second = HeldEntries.poll(_records([(0, "2-0")]))
    held.hold(first, np.array([2, 1], np.int64))
    held.hold(second, np.array([1], np.int64))
    done = held.commit([_hold([0], [1], first), _hold([0, 1], [1, 1], first)])
    assert done == {0: ["1-0", "1-1"]}
    assert [r.entry_id for r in held.records()] == ["2-0"]
    assert held.commit([_hold([0], [1], second)]) == {0: ["2-0"]}


def test_held_entries_are_renewed_without_payloads_and_redeliveries_are_not_fresh() -> None:
    held = HeldEntries()
    records = _records([(0, "5-0"), (3, "5-0"), (3, "6-0")], deliveries=2)
    held.hold(HeldEntries.poll(records), np.array([1, 0, 1], np.int64))
    renew = held.records()
    assert [(r.shard, r.entry_id, r.deliveries, r.payload) for r in renew] == [
        (0, "5-0", 2, b""),
        (3, "6-0", 2, b""),
    ]
    again = _records([(0, "5-0"), (3, "5-0"), (3, "6-0"), (0, "7-0")])
    # the same id on another shard is another entry
    assert [(r.shard, r.entry_id) for r in held.fresh(again)] == [(3, "5-0"), (0, "7-0")]
    assert held.fresh(_records([(0, "8-0")])) == _records([(0, "8-0")])
