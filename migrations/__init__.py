"""The database schema of metah: SQLAlchemy 2.0 models (:mod:`migrations.models`), the Alembic environment and
its versions, and a programmatic upgrade (:mod:`migrations.runner`) used by ``metah migrate`` and ``metah serve``.
"""
