"""Shared fixtures: small real digit folders written from the repo's own data (never from ../shared)."""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting stall FAISS and torch when the other core is busy (see docs/index.md);
# this must be set before torch or faiss is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from model.datasets import load_digits, stratified_sample, write_image_folder
from service.logs import StderrHandler

torch.set_num_threads(1)


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
