"""The bounded-memory paths: past ``memory_budget_mb`` images stream from disk and cached features are read per
batch, and a run that takes them trains exactly like one that holds everything in memory; the end-of-run
evaluation ranks fewer queries at once against a larger database.

(The peak memory itself, on 50,000 images, is measured by ``scripts/bench_memory.py``.)
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch

import model.metrics
from model.backbones import build_backbone
from model.batches import CachedFeatures, InMemoryImages, StreamedImages
from model.config import TrainConfig
from model.data import list_labelled_folder, list_unlabelled_folder
from model.distributed import ProcessGroup
from model.evaluate import encode_files
from model.export import load_encoder
from model.metrics import evaluate_retrieval
from model.train import RunPaths, Trainer, TrainingData, prepare_data, train
from tests.conftest import DigitFolders

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def lenet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded random LeNet weights: a weights file makes LeNet count as pretrained, so it may run frozen."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "lenet.pt"
    torch.save(build_backbone("lenet").module.state_dict(), path)
    return path


def _prepare(config: TrainConfig, digits: DigitFolders, weights: Path | None = None) -> TrainingData:
    backbone = build_backbone("lenet", weights)
    source, target = list_labelled_folder(digits.source), list_unlabelled_folder(digits.target)
    return prepare_data(config.validated(), backbone, source, target, CPU, show_progress=False)


def test_past_the_budget_images_stream_and_features_stay_on_disk(
    digits: DigitFolders, lenet_weights: Path, tmp_path: Path
) -> None:
    finetune = TrainConfig(backbone="lenet", mode="finetune", loader_workers=0)
    held = _prepare(finetune, digits)
    assert isinstance(held.inputs, InMemoryImages) and held.batches == "images_in_memory"
    # ~600 digits decoded at 32×32 are 1.8 MB: more than a 1 MB budget
    streamed = _prepare(finetune.override(memory_budget_mb=1), digits)
    assert isinstance(streamed.inputs, StreamedImages) and streamed.batches == "images_streamed"

    frozen = TrainConfig(
        backbone="lenet",
        backbone_weights=str(lenet_weights),
        mode="frozen",
        feature_views=2,
        feature_cache=str(tmp_path / "cache"),
        loader_workers=0,
    )
    in_memory = _prepare(frozen, digits, lenet_weights)
    assert isinstance(in_memory.inputs, CachedFeatures) and in_memory.batches == "features_in_memory"
    assert in_memory.inputs.source.table is not None
    # 2 views × 512 float16 per image: ~300 images per domain are 0.6 MB, more than half of a 1 MB budget
    on_disk = _prepare(frozen.override(memory_budget_mb=1), digits, lenet_weights)
    assert isinstance(on_disk.inputs, CachedFeatures) and on_disk.batches == "features_from_disk"
    assert on_disk.inputs.source.table is None and on_disk.inputs.target is not None
    assert on_disk.inputs.target.table is None
    index, views = torch.tensor([0, 5, 5, 17]), torch.tensor([0, 0, 1, 1])
    assert torch.equal(on_disk.inputs.source.gather(index, views), in_memory.inputs.source.gather(index, views))


def test_streaming_workers_end_with_training(digits: DigitFolders, tmp_path: Path) -> None:
    """Idle, they would hold their copies of the trainer's pages through the evaluation."""
    config = TrainConfig(
        backbone="lenet", mode="finetune", iterations=3, batch_size=8, memory_budget_mb=1, loader_workers=2
    ).validated()
    data = _prepare(config, digits)
    assert isinstance(data.inputs, StreamedImages)
    trainer = Trainer(config, build_backbone("lenet"), data, RunPaths(tmp_path), ProcessGroup(), CPU)
    before = set(multiprocessing.active_children())
    trainer.run(show_progress=False)
    assert trainer.step == 3
    assert set(multiprocessing.active_children()) <= before


def test_a_frozen_run_reading_features_from_disk_trains_like_one_holding_them(
    digits: DigitFolders, lenet_weights: Path, tmp_path: Path
) -> None:
    config = TrainConfig(
        backbone="lenet",
        backbone_weights=str(lenet_weights),
        mode="frozen",
        iterations=30,
        batch_size=16,
        feature_views=2,
        feature_cache=str(tmp_path / "cache"),
        loader_workers=0,
        eval_queries=30,
    )
    held = train(config, digits.source, digits.target, tmp_path / "held")
    bounded = train(config.override(memory_budget_mb=1), digits.source, digits.target, tmp_path / "bounded")
    assert (held.metrics["batches"], bounded.metrics["batches"]) == ("features_in_memory", "features_from_disk")
    assert bounded.history == held.history
    assert bounded.metrics["evaluation"] == held.metrics["evaluation"]
    queries = list_labelled_folder(digits.query)
    codes = [encode_files(load_encoder(run.paths.model).module, queries, (32, 32)) for run in (held, bounded)]
    assert np.array_equal(codes[0], codes[1])


def test_evaluation_ranks_fewer_queries_at_once_against_a_larger_database(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = np.random.default_rng(0)
    query, database = (np.where(generator.random((n, 16)) > 0.5, 1.0, -1.0) for n in (40, 300))
    q_labels, d_labels = generator.integers(0, 4, 40), generator.integers(0, 4, 300)
    expected = evaluate_retrieval(query, q_labels, database, d_labels)
    rows: list[int] = []
    distances = model.metrics._distances

    def recorded(q: np.ndarray, d: np.ndarray) -> np.ndarray:
        rows.append(q.shape[0])
        return distances(q, d)

    monkeypatch.setattr(model.metrics, "_distances", recorded)
    monkeypatch.setattr(model.metrics, "MAX_CHUNK_PAIRS", 1000)  # 3 queries × 300 items per chunk
    got = evaluate_retrieval(query, q_labels, database, d_labels)
    assert max(rows) == 3 and sum(rows) == 40
    for name in ("map_all", "map_radius2", "precision_radius2", "precision_at_k"):  # the same up to summation order
        assert getattr(got, name) == pytest.approx(getattr(expected, name))
    np.testing.assert_allclose(got.pr_curve.precision, expected.pr_curve.precision)
    np.testing.assert_allclose(got.pr_curve.recall, expected.pr_curve.recall)
