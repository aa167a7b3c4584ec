-- Run once by the TimescaleDB image on an empty data directory (docker-entrypoint-initdb.d).
-- The extension makes `mdp db upgrade` create hypertables with compression; without it the
-- same migrations fall back to native daily range partitions.
CREATE EXTENSION IF NOT EXISTS timescaledb;

-- mdp stores and compares timestamps in UTC; make ad-hoc psql sessions agree.
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET timezone TO %L', current_database(), 'UTC');
END
$$;
