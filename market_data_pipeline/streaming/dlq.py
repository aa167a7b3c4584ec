"""The dead-letter record format shared by both buses, and how a replay finds a routing key.

A dead letter is stored as flat fields (Redis stream entry fields; Kafka: a msgpack map as the
message value): ``payload`` (the original bytes), ``reason``, ``detail``, ``component``,
``source_topic``, ``source_shard``, ``source_id``, ``ts`` (ISO-8601 UTC, when it was dead-lettered)
and ``deliveries``; and ``source_field.<name>`` for every other field of the original entry
(:attr:`~market_data_core.protocols.BusRecord.extra_fields`: a Redis entry's fields besides
``data``, a Kafka record's ``key`` and headers as ``header.<name>``), so an entry another producer
wrote with its content outside ``data`` keeps it. The DLQ is never trimmed: nothing leaves it
except through ``mdp stream dlq replay`` (after the re-publish succeeded) or ``purge``.

Not every letter can succeed when replayed (:func:`replay_blocker`): a payload that failed to
decode or validate fails the same way when re-sent unchanged, an entry trimmed away has no
payload, and a bad row of a dataset file is not a bus entry. ``dlq replay`` skips those unless
``--force``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgpack

from market_data_core.protocols import Bus, BusRecord, DeadLetter, routing_key, shard_for

__all__ = [
    "SOURCE_FIELD_PREFIX",
    "UNREPLAYABLE_REASONS",
    "ReplayOutcome",
    "describe_fields",
    "key_for_shard",
    "letter_fields",
    "letter_from_fields",
    "letter_from_record",
    "replay_blocker",
    "replay_key",
    "replay_letters",
]

SOURCE_FIELD_PREFIX = "source_field."

UNREPLAYABLE_REASONS: frozenset[str] = frozenset(
    {"decode", "validation", "parse", "ambiguous_time", "nonexistent_time", "trimmed"}
)
"""Reasons a payload fails the same way when re-sent unchanged (or, ``trimmed``, is gone)."""


def describe_fields(record: BusRecord) -> str:
    """What a letter's detail adds about an entry with no payload but other fields
    (``""`` otherwise): says where its content is."""
    if record.payload or not record.extra_fields:
        return ""
    names = ", ".join(name for name, _ in record.extra_fields)
    return f"; the entry has no data field, only {names} (kept in the letter)"


def letter_from_record(
    record: BusRecord,
    *,
    reason: str,
    detail: str,
    component: str,
    payload: bytes | None = None,
    ts: datetime | None = None,
) -> DeadLetter:
    """The dead letter for an entry read from the bus (its id is assigned by the DLQ): its
    payload (or ``payload``, e.g. the one event of a packed entry that failed), where it came
    from, and every other field of the entry."""
    return DeadLetter(
        entry_id="",
        payload=record.payload if payload is None else payload,
        reason=reason,
        detail=detail + describe_fields(record),
        component=component,
        source_topic=record.topic,
        source_shard=record.shard,
        source_id=record.entry_id,
        ts=datetime.now(UTC) if ts is None else ts,
        deliveries=record.deliveries,
        source_fields=record.extra_fields,
    )


def letter_fields(letter: DeadLetter) -> dict[str, bytes]:
    """The stored fields of a dead letter (all bytes, so both backends store them as is)."""
    return {
        "payload": letter.payload,
        "reason": letter.reason.encode(),
        "detail": letter.detail.encode(),
        "component": letter.component.encode(),
        "source_topic": letter.source_topic.encode(),
        "source_shard": str(letter.source_shard).encode(),
        "source_id": letter.source_id.encode(),
        "ts": letter.ts.astimezone(UTC).isoformat().encode(),
        "deliveries": str(letter.deliveries).encode(),
        **{SOURCE_FIELD_PREFIX + name: value for name, value in letter.source_fields},
    }


def _text(fields: Mapping[str, bytes], name: str, default: str = "") -> str:
    value = fields.get(name)
    return default if value is None else value.decode("utf-8", errors="replace")


def _int(fields: Mapping[str, bytes], name: str, default: int) -> int:
    try:
        return int(_text(fields, name, str(default)))
    except ValueError:
        return default


def letter_from_fields(entry_id: str, fields: Mapping[str, bytes]) -> DeadLetter:
    """Read a stored dead letter back; missing or odd fields get neutral values, never raise
    (the DLQ may hold entries written by other tools)."""
    try:
        ts = datetime.fromisoformat(_text(fields, "ts"))
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
    except ValueError:
        ms = entry_id.split("-", 1)[0]
        ts = datetime.fromtimestamp(int(ms) / 1000 if ms.isdigit() else 0, UTC)
    return DeadLetter(
        entry_id=entry_id,
        payload=fields.get("payload", b""),
        reason=_text(fields, "reason", "unknown"),
        detail=_text(fields, "detail"),
        component=_text(fields, "component", "unknown"),
        source_topic=_text(fields, "source_topic"),
        source_shard=_int(fields, "source_shard", 0),
        source_id=_text(fields, "source_id"),
        ts=ts,
        deliveries=_int(fields, "deliveries", 1),
        source_fields=tuple(
            (name.removeprefix(SOURCE_FIELD_PREFIX), value)
            for name, value in fields.items()
            if name.startswith(SOURCE_FIELD_PREFIX)
        ),
    )


def _first_item(payload: bytes) -> Any:
    head = payload.lstrip()[:1]
    if head in (b"{", b"["):
        obj = json.loads(payload)
    else:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=False, timestamp=0)
    if isinstance(obj, list):
        return obj[0] if obj else None
    return obj


def replay_key(payload: bytes) -> str | None:
    """The routing key of a dead-lettered payload (``provider|symbol`` of its first event), or
    ``None`` when the payload does not say (undecodable bytes cannot be routed)."""
    try:
        item = _first_item(payload)
    except Exception:  # any decoder failure means the same thing here: no key
        return None
    if not isinstance(item, dict):
        return None
    provider, symbol = item.get("provider"), item.get("symbol")
    if isinstance(provider, str) and isinstance(symbol, str) and provider and symbol:
        return routing_key(provider, symbol)
    return None


def key_for_shard(shard: int, partitions: int) -> str:
    """A synthetic routing key that lands on ``shard``: replays a payload whose own key cannot
    be read back to the shard it came from."""
    for i in range(100 * max(partitions, 1)):
        key = f"dlq-replay|{i}"
        if shard_for(key, partitions) == shard:
            return key
    raise ValueError(f"no key found for shard {shard} of {partitions}")  # pragma: no cover


def _not_a_bus_entry(letter: DeadLetter) -> str | None:
    if not letter.source_topic:
        return "no source topic"
    if letter.component == "replay":
        return (
            f"a bad row of the dataset file {letter.source_topic} ({letter.reason}); fix the "
            "file and replay the dataset"
        )
    return None


def replay_blocker(letter: DeadLetter) -> str | None:
    """Why replaying ``letter`` cannot succeed (``None``: it may). Re-sent unchanged, a
    payload that failed to decode or validate fails again; a ``trimmed`` entry or one with no
    payload has nothing to send; a bad dataset row (component ``replay``) is a line of a file,
    not a bus entry (fix the file and replay the dataset), and a letter without a source
    topic has nowhere to go: those two are never replayed, even when forced."""
    never = _not_a_bus_entry(letter)
    if never is not None:
        return never
    if letter.reason in UNREPLAYABLE_REASONS:
        return f"{letter.reason}: re-sent unchanged it fails again"
    if not letter.payload:
        fields = ", ".join(name for name, _ in letter.source_fields)
        return "no payload" + (f" (the entry's content is in {fields})" if fields else "")
    return None


@dataclass(slots=True)
class ReplayOutcome:
    """What a replay did: ids re-published (and then deleted), and ids left with the reason."""

    replayed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


async def replay_letters(
    bus: Bus,
    letters: Sequence[DeadLetter],
    *,
    shards_of: Mapping[str, int],
    force: bool = False,
) -> ReplayOutcome:
    """Re-publish dead letters to their source topic, routed by their payload's key (or to
    their source shard when the payload names none), then delete them from the DLQ.

    Letters that cannot succeed (:func:`replay_blocker`) are skipped with the reason and stay,
    unless ``force`` (letters without a source topic and bad dataset rows are always
    skipped).
    ``shards_of`` maps a topic to its shard count (missing = 1). A letter leaves the DLQ only
    after its publish succeeded: if publishing raises ``BusError``, the letters of that topic
    stay and the error propagates (a retry publishes them again; event ids make that safe).
    """
    outcome = ReplayOutcome()
    by_topic: dict[str, list[tuple[DeadLetter, str]]] = {}
    for letter in letters:
        blocker = _not_a_bus_entry(letter) if force else replay_blocker(letter)
        if blocker is not None:
            outcome.skipped.append((letter.entry_id, blocker))
            continue
        shards = shards_of.get(letter.source_topic, 1)
        key = replay_key(letter.payload)
        if key is None:
            key = key_for_shard(letter.source_shard % shards, shards) if shards > 1 else ""
        by_topic.setdefault(letter.source_topic, []).append((letter, key))
    for topic, pairs in by_topic.items():
        await bus.publish(topic, [(key, letter.payload) for letter, key in pairs])
        ids = [letter.entry_id for letter, _ in pairs]
        await bus.dlq_delete(ids)
        outcome.replayed.extend(ids)
    return outcome
