"""Background jobs: a queue in the database's ``jobs`` table, workers that claim and run them, and the job
kinds (bulk ingestion of an archive).

:mod:`service.jobs.queue` holds the table operations, :mod:`service.jobs.worker` the claim-run loop,
:mod:`service.jobs.ingest` the ingest job, :mod:`service.jobs.process` the worker child process of ``metah serve``.
"""
