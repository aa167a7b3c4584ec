"""Persistence of mdp: SQLAlchemy models, Alembic migrations, asyncpg clients.

All SQL of mdp lives in this package.
"""
