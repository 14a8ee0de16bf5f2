"""Shared fixtures: small real digit folders written from the repo's own data (never from ../shared); and the
rule that CI runs every backend (``METAH_REQUIRE_ALL_BACKENDS``)."""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting stall FAISS and torch when the other core is busy (see docs/index.md);
# this must be set before torch or faiss is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from service.logs import StderrHandler
from workbench.datasets import load_digits, stratified_sample, write_image_folder

torch.set_num_threads(1)

# pytester: tests/test_backends.py runs small suites of its own; tests.s3server, tests.milvus: the S3 server's
# and Milvus's fixtures.
pytest_plugins = ("pytester", "tests.s3server", "tests.milvus")


def backends_required() -> bool:
    """Every skip in this suite is a backend missing on this machine: PostgreSQL, Chromium, docker-compose,
    root for a tmpfs, an optional package. A developer may run without one; CI (``.ci/run`` sets
    ``METAH_REQUIRE_ALL_BACKENDS=1``) must not."""
    return os.environ.get("METAH_REQUIRE_ALL_BACKENDS", "") not in ("", "0")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under ``METAH_REQUIRE_ALL_BACKENDS=1`` a skipped test (``pytest.skip``, ``skipif``, ``importorskip``,
    in the test or in a fixture) is reported as failed, with the skip's reason."""
    report = yield
    if report.skipped and backends_required() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"METAH_REQUIRE_ALL_BACKENDS is set, so this may not skip: {reason}"
    return report


@dataclass(frozen=True)
class DigitFolders:
    source: Path  # labelled MNIST, ImageFolder
    target: Path  # unlabelled USPS, flat
    query: Path  # labelled USPS queries, disjoint from target
    target_labelled: Path  # the same USPS images as `target`, with labels (evaluation only)


def make_digit_folders(root: Path, per_class: int, seed: int = 0) -> DigitFolders:
    mnist, usps = load_digits("mnist"), load_digits("usps")
    source = mnist.take(stratified_sample(mnist.labels, per_class, seed))
    usps_index = stratified_sample(usps.labels, per_class + per_class // 3, seed)
    target_index, query_index = usps_index[: len(usps_index) * 3 // 4], usps_index[len(usps_index) * 3 // 4 :]
    return DigitFolders(
        source=write_image_folder(source, root / "source"),
        target=write_image_folder(usps.take(target_index), root / "target", labelled=False),
        query=write_image_folder(usps.take(query_index), root / "query"),
        target_labelled=write_image_folder(usps.take(target_index), root / "target_labelled"),
    )


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitFolders:
    """About 300 MNIST source and 300 USPS target images (+ labelled USPS queries)."""
    return make_digit_folders(tmp_path_factory.mktemp("digits"), per_class=30)


@pytest.fixture(autouse=True)
def _no_leftover_log_handler() -> Iterator[None]:
    """Tests that call ``service.cli.main`` in-process install the CLI's stderr handler; remove it afterwards so
    later tests' logs stay in pytest's capture."""
    yield
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, StderrHandler)]
