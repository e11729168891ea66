"""Alembic environment and versions; shipped in the package so `dr4sr db upgrade` works anywhere."""

from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parent
