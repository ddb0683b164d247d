"""Nightly history: every run kept in a database (``store``), filled from report folders (``ingest``).

Needs the ``history`` extra (SQLAlchemy; ``psycopg`` for PostgreSQL): ``pip install 'pytest-llmperf[history]'``.
"""
