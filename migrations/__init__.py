"""The history of metah's database schema: the Alembic environment (``env.py``) and its versions, nothing else.

The tables are the service's (:mod:`service.models`) and ``env.py`` imports them; :mod:`service.migrate` applies
these versions (``metah migrate``, ``metah serve`` on SQLite, the tests).
"""
