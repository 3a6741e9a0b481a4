"""Alembic migrations of the prediction store (a package so they ship with `serving`)."""
