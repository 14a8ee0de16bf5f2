"""Alembic revisions (a package only so that installs ship them; Alembic reads the files itself)."""
