"""The dead-letter format keeps a foreign entry's fields, and replay knows which letters cannot
succeed (issue 18, item 6), without a server."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from market_data_core.protocols import BusRecord, DeadLetter
from market_data_pipeline.streaming.dlq import (
    letter_fields,
    letter_from_fields,
    letter_from_record,
    replay_blocker,
)

TS = datetime(2026, 1, 2, 14, 30, tzinfo=UTC)


def _letter(**changes: object) -> DeadLetter:
    base: dict[str, object] = {
        "entry_id": "5-0",
        "payload": b'{"provider":"p","symbol":"S"}',
        "reason": "late",
        "detail": "d",
        "component": "microbatch",
        "source_topic": "mdp.events",
        "source_shard": 1,
        "source_id": "1-0",
        "ts": TS,
    }
    base.update(changes)
    return DeadLetter(**base)  # type: ignore[arg-type]


def test_a_record_without_data_keeps_its_fields_in_the_letter() -> None:
    record = BusRecord(
        "mdp.events", 2, "9-1", b"", 1, (("payload", b"{...}"), ("source", b"other"))
    )
    letter = letter_from_record(
        record, reason="decode", detail="empty payload", component="microbatch"
    )
    assert letter.source_fields == record.extra_fields
    assert letter.detail == (
        "empty payload; the entry has no data field, only payload, source (kept in the letter)"
    )
    stored = letter_fields(letter)
    assert stored["source_field.payload"] == b"{...}"
    assert stored["source_field.source"] == b"other"
    back = letter_from_fields("11-0", stored)
    assert back.source_fields == record.extra_fields
    assert back.payload == b"" and back.reason == "decode"


def test_mdp_records_add_nothing() -> None:
    record = BusRecord("mdp.events", 0, "1-0", b"\x81\xa1a\x01")
    letter = letter_from_record(record, reason="validation", detail="x", component="microbatch")
    assert letter.source_fields == () and letter.detail == "x"
    assert not any(k.startswith("source_field.") for k in letter_fields(letter))


@pytest.mark.parametrize(
    ("changes", "blocked"),
    [
        ({}, None),
        ({"reason": "max_deliveries", "component": "bus"}, None),
        ({"reason": "store"}, None),
        ({"reason": "decode"}, "decode: re-sent unchanged it fails again"),
        ({"reason": "validation"}, "validation: re-sent unchanged it fails again"),
        ({"reason": "trimmed", "payload": b""}, "trimmed: re-sent unchanged it fails again"),
        ({"payload": b""}, "no payload"),
        (
            {"payload": b"", "source_fields": (("body", b"x"),)},
            "no payload (the entry's content is in body)",
        ),
        ({"source_topic": ""}, "no source topic"),
        (
            {"component": "replay", "reason": "parse", "source_topic": "/d/t.csv"},
            "a bad row of the dataset file /d/t.csv (parse); fix the file and replay the dataset",
        ),
    ],
)
def test_replay_blockers(changes: dict[str, object], blocked: str | None) -> None:
    assert replay_blocker(_letter(**changes)) == blocked
