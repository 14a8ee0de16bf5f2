"""What the scripts (benchmarks, demo) and the tests share, outside the installed package.

``model``, ``index``, ``service`` and ``migrations`` are what ``pip install`` ships; this folder is used from a
checkout (or the Docker image's /app) only: the datasets in the repository's ``data/`` folder, the machine
description every benchmark records, and small helpers (PNG bytes, free ports, child processes, ``100k`` sizes).
Tests import from here, never from ``scripts/``.
"""
