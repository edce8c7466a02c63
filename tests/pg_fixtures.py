"""Fixtures for a real PostgreSQL server (see scripts/postgres.sh)."""
