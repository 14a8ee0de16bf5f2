"""SQLAlchemy models and Alembic migrations for the service's metadata (issue 4)."""
