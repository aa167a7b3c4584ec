"""Migrations: empty -> head -> base -> head, the native partition fallback, and `mdp db`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime

import asyncpg
import pytest

from market_data_core.contracts import make_event_id
from market_data_core.errors import ConfigError
from market_data_pipeline.cli.app import main as mdp_main
from market_data_store import (
    PgJobRunTracker,
    current_revision,
    downgrade_schema,
    head_revision,
    upgrade_schema,
)
from market_data_store.partitions import PartitionManager
from tests.integration._store_db import create_database, drop_database, fresh_database

TABLES = {"bars_ohlcv", "job_runs", "signals", "ticks"}


@pytest.fixture
async def empty_db(database_url: str) -> AsyncIterator[str]:
    async with fresh_database(database_url) as url:
        yield url


async def _tables(url: str) -> dict[str, str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT relname, relkind::text AS relkind FROM pg_class WHERE relnamespace = 'public'::regnamespace "
            "AND relkind IN ('r', 'p') AND NOT relispartition"
        )
    finally:
        await conn.close()
    return {r["relname"]: r["relkind"] for r in rows}


async def test_upgrade_downgrade_upgrade(empty_db: str) -> None:
    assert await current_revision(empty_db) is None
    assert await upgrade_schema(empty_db) == head_revision()
    tables = await _tables(empty_db)
    assert set(tables) >= TABLES
    # No TimescaleDB here: the time-series tables are natively range-partitioned.
    assert {t: tables[t] for t in ("bars_ohlcv", "signals", "ticks")} == {
        "bars_ohlcv": "p",
        "signals": "p",
        "ticks": "p",
    }
    assert tables["job_runs"] == "r"

    assert await downgrade_schema(empty_db, "0002") == "0002_job_runs"
    assert set(await _tables(empty_db)) & TABLES == {"bars_ohlcv", "job_runs"}

    assert await downgrade_schema(empty_db, "base") is None
    assert set(await _tables(empty_db)) - {"alembic_version"} == set()

    assert await upgrade_schema(empty_db) == head_revision()
    assert set(await _tables(empty_db)) >= TABLES


async def test_constraint_names_follow_the_convention(empty_db: str) -> None:
    await upgrade_schema(empty_db)
    conn = await asyncpg.connect(empty_db)
    try:
        names = {
            r["conname"]
            for r in await conn.fetch(
                "SELECT conname FROM pg_constraint WHERE conrelid = ANY("
                "ARRAY['bars_ohlcv', 'ticks', 'signals', 'job_runs']::regclass[])"
            )
        }
    finally:
        await conn.close()
    assert {"pk_bars_ohlcv", "pk_ticks", "pk_signals", "pk_job_runs"} <= names
    assert "ck_job_runs_status_known" in names


async def test_unknown_revision_is_a_config_error(empty_db: str) -> None:
    with pytest.raises(ConfigError, match="0099"):
        await upgrade_schema(empty_db, "0099")


def test_mdp_db_cli_upgrade_and_downgrade(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = asyncio.run(create_database(database_url))
    try:
        monkeypatch.setenv("DATABASE_URL", url)
        assert mdp_main(["db", "upgrade"]) == 0
        assert head_revision() in capsys.readouterr().out
        # destructive: without --yes nothing is dropped, one line, exit 2
        assert mdp_main(["db", "downgrade", "--revision", "0001"]) == 2
        _, err = capsys.readouterr()
        assert err.count("\n") == 1 and err.startswith("mdp: error: --yes: ") and "--yes" in err
        assert asyncio.run(_tables(url)).keys() & TABLES == TABLES
        assert mdp_main(["db", "downgrade", "--revision", "0001", "--yes"]) == 0
        assert "0001_bars_ohlcv" in capsys.readouterr().out
        assert mdp_main(["db", "downgrade", "--revision", "nope", "--yes"]) == 2
        assert asyncio.run(_tables(url)).keys() & TABLES == {"bars_ohlcv"}
        assert mdp_main(["db", "downgrade", "--revision", "base", "--yes"]) == 0
    finally:
        asyncio.run(drop_database(url))


async def test_models_match_the_migrations(empty_db: str) -> None:
    """Alembic's autogenerate comparison finds nothing to change between the SQLAlchemy
    models and the migrated schema (partitions aside)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from market_data_store.migrate import run_with_connection
    from market_data_store.models import Base

    await upgrade_schema(empty_db)

    def include(
        obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
    ) -> bool:
        return not (
            type_ == "table" and name is not None and ("_p2" in name or name == "alembic_version")
        )

    def diff(connection: object) -> list[object]:
        ctx = MigrationContext.configure(
            connection,  # type: ignore[arg-type]
            opts={"include_object": include, "compare_type": True},
        )
        return list(compare_metadata(ctx, Base.metadata))

    assert await run_with_connection(empty_db, diff) == []


async def test_0006_job_runs_heartbeat_up_and_down(empty_db: str) -> None:
    """Rows from before the heartbeat get one (their end, else their start); a run left
    `running` by a killed worker then is abandoned by the next start; downgrade keeps the
    reason and makes such rows `failed`."""
    before = "0005_bars_volume_optional"
    assert await upgrade_schema(empty_db, before) == before
    conn = await asyncpg.connect(empty_db)
    try:
        await conn.execute(
            "INSERT INTO job_runs (job, config_hash, started_at, finished_at, status) VALUES "
            "('dead', 'h', now() - interval '1 hour', NULL, 'running'), "
            "('done', 'h', now() - interval '2 hours', now() - interval '90 minutes', 'success')"
        )
        assert await upgrade_schema(empty_db, "0006_job") == "0006_job_runs_heartbeat"
        rows = {
            r["job"]: r
            for r in await conn.fetch(
                "SELECT job, status, started_at, finished_at, heartbeat_at, "
                "heartbeat_interval_ms FROM job_runs"
            )
        }
        assert rows["dead"]["heartbeat_at"] == rows["dead"]["started_at"]
        assert rows["done"]["heartbeat_at"] == rows["done"]["finished_at"]
        assert {r["heartbeat_interval_ms"] for r in rows.values()} == {10_000}

        tracker = await PgJobRunTracker.connect(empty_db, pool_max=1)
        try:
            assert [(r.job, r.status) for r in await tracker.abandon_stale()] == [
                ("dead", "abandoned")
            ]
        finally:
            await tracker.aclose()

        assert await downgrade_schema(empty_db, before) == before
        status, detail = await conn.fetchrow(
            "SELECT status, detail FROM job_runs WHERE job = 'dead'"
        )
        assert status == "failed" and detail.startswith("abandoned: no heartbeat since")
        columns = {
            r["column_name"]
            for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'job_runs'"
            )
        }
        assert not columns & {"heartbeat_at", "heartbeat_interval_ms"}
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE job_runs SET status = 'abandoned' WHERE job = 'dead'")
        assert await upgrade_schema(empty_db) == head_revision()
    finally:
        await conn.close()


async def test_0010_ticks_without_event_id_up_and_down(empty_db: str) -> None:
    """Ticks stored with their event_id lose the column (the key is the id); a downgrade
    writes it back from the key exactly as make_event_id does (µs, Z, UTC)."""
    before = "0009_rollups"
    assert await upgrade_schema(empty_db, before) == before
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)  # partitioned
    rows = [
        ("prov", "AAPL", day.replace(hour=14, minute=30, microsecond=5), 7),
        ("prov", "MSFT", day.replace(hour=9, second=1, microsecond=999_999), 2**40),
        ("p|x", "S Y", day, 0),
    ]
    conn = await asyncpg.connect(empty_db)
    try:
        await conn.executemany(
            "INSERT INTO ticks (provider, symbol, ts, seq, event_id, price, size) "
            "VALUES ($1, $2, $3, $4, $5, 1, 1)",
            [(*r, make_event_id(*r)) for r in rows],
        )
        assert await upgrade_schema(empty_db) == head_revision()
        columns = {
            r["column_name"]
            for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'ticks'"
            )
        }
        assert "event_id" not in columns and await conn.fetchval("SELECT count(*) FROM ticks") == 3
        assert await downgrade_schema(empty_db, before) == before
        back = await conn.fetch("SELECT provider, symbol, ts, seq, event_id FROM ticks")
        assert {r["event_id"] for r in back} == {make_event_id(*r) for r in rows}
        assert await upgrade_schema(empty_db) == head_revision()
    finally:
        await conn.close()


async def _insert_vacuum_off(conn: asyncpg.Connection) -> dict[str, bool]:
    """Each partition of the time-series tables: whether inserts alone trigger no vacuum."""
    rows = await conn.fetch(
        "SELECT c.relname, coalesce(c.reloptions, '{}') AS options FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
        "WHERE p.relname IN ('ticks', 'quotes', 'bars_ohlcv', 'quote_bars', 'signals')"
    )
    return {r["relname"]: "autovacuum_vacuum_insert_threshold=-1" in r["options"] for r in rows}


async def test_0011_raw_partitions_are_not_vacuumed_for_inserts(empty_db: str) -> None:
    """The raw tables' partitions, those that exist at the upgrade (made by an older mdp)
    and those made later, carry ``autovacuum_vacuum_insert_threshold = -1``; no other
    table's do; a downgrade resets it."""
    before = "0010_ticks_without_event_id"
    assert await upgrade_schema(empty_db, before) == before
    conn = await asyncpg.connect(empty_db)
    try:
        for name in await _insert_vacuum_off(conn):  # as an mdp before 0011 made them
            await conn.execute(f'ALTER TABLE "{name}" RESET (autovacuum_vacuum_insert_threshold)')
        assert not any((await _insert_vacuum_off(conn)).values())
        assert await upgrade_schema(empty_db) == head_revision()
        flags = await _insert_vacuum_off(conn)
        raw = {name for name in flags if name.startswith(("ticks_p", "quotes_p"))}
        assert raw and {name for name, off in flags.items() if off} == raw
        pool = await asyncpg.create_pool(empty_db, min_size=1, max_size=1)
        try:  # a day no partition holds yet: made as a client makes it before writing
            assert await PartitionManager().ensure(pool, "ticks", [date(2031, 5, 6)]) == 1
        finally:
            await pool.close()
        assert (await _insert_vacuum_off(conn))["ticks_p20310506"]
        assert await downgrade_schema(empty_db, before) == before
        assert not any((await _insert_vacuum_off(conn)).values())
        assert await upgrade_schema(empty_db) == head_revision()
    finally:
        await conn.close()


async def _primary_key(conn: asyncpg.Connection, table: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT a.attname FROM pg_index i "
        "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY k.n",
        table,
    )
    return [r["attname"] for r in rows]


async def test_raw_tables_are_keyed_by_the_series_key_first(empty_db: str) -> None:
    """Migrations 0012 and 0013: ticks and quotes keyed ``(series_key, ts, seq)``,
    ``series_key`` the writer's, held by a ``CHECK`` to the same SQL the store's reads use (a
    row without it, or with another series' key, is refused); rows survive the downgrades to
    the generated key (0012) and the old key (0011) and the upgrade back."""
    from market_data_store._schema_names import series_key

    assert await upgrade_schema(empty_db) == head_revision()
    conn = await asyncpg.connect(empty_db)
    ts = datetime.now(UTC)  # today's partitions: made by the migrations
    key = series_key("$1::text", "$2::text")
    aapl, msft = series_key("'polygon'", "'AAPL'"), series_key("'polygon'", "'MSFT'")
    try:
        for table in ("ticks", "quotes"):
            assert await _primary_key(conn, table) == ["series_key", "ts", "seq"]
        await conn.execute(
            "INSERT INTO ticks (provider, symbol, ts, seq, price, size, series_key) "
            f"VALUES ('polygon', 'AAPL', $1, 7, 1.5, 2, {aapl}), "
            f"('polygon', 'MSFT', $1, 7, 2.5, 1, {msft})",
            ts,
        )
        await conn.execute(
            "INSERT INTO quotes (provider, symbol, ts, seq, bid, ask, series_key) "
            f"VALUES ('polygon', 'AAPL', $1, 7, 1.5, 1.6, {aapl})",
            ts,
        )
        with pytest.raises(asyncpg.NotNullViolationError, match="series_key"):
            await conn.execute(
                "INSERT INTO ticks (provider, symbol, ts, seq, price, size) "
                "VALUES ('polygon', 'AAPL', $1, 8, 1, 1)",
                ts,
            )
        for table, extra in (("ticks", "price, size"), ("quotes", "bid, ask")):
            with pytest.raises(asyncpg.CheckViolationError, match=f"ck_{table}_series_key"):
                await conn.execute(
                    f"INSERT INTO {table} (provider, symbol, ts, seq, {extra}, series_key) "
                    f"VALUES ('polygon', 'AAPL', $1, 9, 1, 1, {msft})",
                    ts,
                )
        for table in ("ticks", "quotes"):
            found = await conn.fetchval(
                f"SELECT count(*) FROM {table} WHERE series_key = {key} "
                "AND provider = $1 AND symbol = $2",
                "polygon",
                "AAPL",
            )
            assert found == 1
        plan_rows = await conn.fetch(
            f"EXPLAIN (FORMAT TEXT) SELECT * FROM ticks WHERE series_key = {key} "
            "AND provider = $1 AND symbol = $2 AND ts >= $3",
            "polygon",
            "AAPL",
            ts,
        )
        plan = "\n".join(r[0] for r in plan_rows)
        assert "Index Cond: ((series_key = " in plan, plan
        assert await downgrade_schema(empty_db, "0012") == "0012_raw_series_key"
        assert await _primary_key(conn, "ticks") == [
            "series_key",
            "ts",
            "seq",
            "provider",
            "symbol",
        ]
        # generated again: a row written with only provider and symbol gets its key
        await conn.execute(
            "INSERT INTO quotes (provider, symbol, ts, seq, bid, ask) "
            "VALUES ('polygon', 'MSFT', $1, 7, 2.5, 2.6)",
            ts,
        )
        assert (
            await conn.fetchval(
                f"SELECT count(*) FROM quotes WHERE series_key = {key}", "polygon", "MSFT"
            )
            == 1
        )
        assert await downgrade_schema(empty_db, "0011") == "0011_raw_tables_no_insert_vacuum"
        assert await _primary_key(conn, "ticks") == ["provider", "symbol", "ts", "seq"]
        assert await conn.fetchval("SELECT count(*) FROM ticks") == 2
        assert await upgrade_schema(empty_db) == head_revision()
        # the upgrade registers the stored series (the rows above bypassed the writers)
        registered = await conn.fetch("SELECT provider, symbol FROM raw_series ORDER BY symbol")
        assert [tuple(r) for r in registered] == [("polygon", "AAPL"), ("polygon", "MSFT")]
        assert (
            await conn.fetchval(
                f"SELECT count(*) FROM ticks WHERE series_key = {key}", "polygon", "MSFT"
            )
            == 1
        )
        assert await _primary_key(conn, "quotes") == ["series_key", "ts", "seq"]
    finally:
        await conn.close()
