"""RecordBatch: a poll's entries as parallel lists, each record made on demand, equal to the
list of records it stands for."""

from __future__ import annotations

import pytest

from market_data_core.protocols import BusRecord, RecordBatch


def _records() -> list[BusRecord]:
    return [
        BusRecord("mdp.events", 0, "1-0", b"a"),
        BusRecord("mdp.events", 1, "1-1", b"b", 3),
        BusRecord("mdp.events", 0, "2-0", b"", 1, (("payload", b"{}"),)),
    ]


def test_a_batch_of_records_gives_back_exactly_those_records() -> None:
    records = _records()
    batch = RecordBatch.of(records)
    assert len(batch) == 3
    assert list(batch) == records
    assert batch == records
    assert [batch[i] for i in (-3, -2, -1)] == records
    assert batch.deliveries == [1, 3, 1]
    assert batch.extra_fields == {2: (("payload", b"{}"),)}
    assert RecordBatch.of(batch) is batch
    with pytest.raises(IndexError):
        batch[3]


def test_a_read_of_new_entries_has_no_delivery_list_and_counts_each_as_first() -> None:
    batch = RecordBatch("t", [0, 0], ["1-0", "1-1"], [b"x", b"y"])
    assert batch.deliveries is None
    assert [r.deliveries for r in batch] == [1, 1]
    assert RecordBatch.of(list(batch)).deliveries is None


def test_take_and_slices_keep_each_entrys_fields() -> None:
    records = _records()
    batch = RecordBatch.of(records)
    assert batch.take([2, 0]) == [records[2], records[0]]
    assert batch.take([2]).extra_fields == {0: (("payload", b"{}"),)}
    assert batch[1:] == records[1:]
    assert isinstance(batch[1:], RecordBatch)
    assert batch.take([]) == []


def test_parallel_lists_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="one shard, id, payload"):
        RecordBatch("t", [0], ["1-0", "1-1"], [b"x", b"y"])
    with pytest.raises(ValueError, match="one shard, id, payload"):
        RecordBatch("t", [0], ["1-0"], [b"x"], [1, 2])
