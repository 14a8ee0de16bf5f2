"""One benchmark runner for every task: the digit pairs (LeNet, trained end to end) and the PACS photo pairs
(frozen EfficientNet-Lite0 features, or Lite2 with ``--photo-backbone``), every method, tuned on validation
queries, reported on test queries.

Protocol. The source domain is labelled: the training set and the database. Each seed splits the target domain
into 10 % **validation** queries, 10 % **test** queries and 80 % unlabelled training images. Every run is scored on
both query sets and two protocols (target queries vs the source database; vs the target training images, their
labels used only for scoring). Every choice — each method's loss weights from its small grid below, the same
budget for every method — is made on validation MAP@all (mean over the tasks of a training mode and the tuning
seeds); the tables report the test queries only. TAH is also reported at its reference weighting, and on the photo
tasks MeTAH given the target's class mix as counted on the validation queries (a row of its own: it reads the
validation labels' class counts, which no unsupervised row does). Held-out tasks
(MNIST → MNIST-M, photo → art painting) are shifts no choice looked at: reported at 64 bits with the weights the
other tasks chose, to show whether a default holds beyond the tasks it was chosen on.

Seeds: 5 at 64 bits (``--seeds-64`` more, from a longer ``--seeds``), 3 at 16 and 32 bits, 3 for each ablation
(on every task, the held-out ones too); the tuning runs (64 bits, seeds 0 and 1, full length) are the first two
seeds of the chosen weights' 64-bit cells.

Raw results: one JSON line per run and query split in ``OUT/runs.jsonl`` (``task``, ``method``, ``bits``,
``seed``, ``split``, ``variant``, ``map_all``, ``map_radius2``, ``precision_radius2``, both protocols, ``commit``,
``command``, ``machine``, ``date``); ``OUT/cosine.jsonl`` holds the no-hashing reference. An interrupted
benchmark resumes where it stopped; ``--stage report`` rebuilds ``results.md`` and the plots from the raw lines.

    .venv/bin/python -m scripts.bench --stage all --family digits --out benchmarks/retrieval
    .venv/bin/python -m scripts.bench --stage all --family photos --pacs ../shared/data/pacs

Scoring. Digit runs are scored with the exported ``model.pt`` itself. Photo runs compute codes the way the
artefact does (frozen features of the plain image → hash projection → sign) from the feature cache, and encode
``--artefact-check`` test images with ``model.pt`` to record how many codes agree exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from functools import cache
from itertools import islice
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from model.backbones import build_backbone
from model.config import TrainConfig
from model.data import FileSet, decode_files, list_labelled_folder
from model.evaluate import encode_files, encode_images, shared_label_ids
from model.export import load_encoder
from model.factory import restore_network
from model.features import FeatureCache, FeatureTable, extract_features
from model.metrics import evaluate_retrieval
from model.objective import LossWeights, method_weights
from model.preprocess import to_model_input
from model.train import feature_cache_for, train
from scripts.bench_stats import cosine_map, describe_run, format_mean_std, mean_std, paired_difference
from workbench.datasets import load_digits, write_image_folder

METHODS = ("source_only", "tah", "metah")
METRICS = ("map_all", "map_radius2", "precision_radius2")
PROTOCOLS = ("target_vs_source", "target_vs_target")
SPLITS = ("validation", "test")
PHOTO_BACKBONE = "efficientnet_lite0"  # the product's choice for photos (model.choice); --photo-backbone changes it
PHOTO_BACKBONES = ("efficientnet_lite0", "efficientnet_lite0_blocks", "efficientnet_lite2")


@dataclass(frozen=True)
class Task:
    family: str  # "digits" (LeNet, finetune) or "photos" (EfficientNet-Lite0, frozen)
    source: str
    target: str
    held_out: bool = False  # a shift no choice looked at: reported, never used to choose weights

    @property
    def mode(self) -> str:
        return "finetune" if self.family == "digits" else "frozen"


TASKS: dict[str, Task] = {
    "mnist-usps": Task("digits", "mnist", "usps"),
    "usps-mnist": Task("digits", "usps", "mnist"),
    # MNIST-M image i is drawn from MNIST test image i: the shipped MNIST-M images (6000-8999) meet MNIST 0-5999
    "mnist-mnistm": Task("digits", "mnist_0_5999", "mnist_m", held_out=True),
    "photo-cartoon": Task("photos", "photo", "cartoon"),
    "photo-sketch": Task("photos", "photo", "sketch"),
    "photo-art": Task("photos", "photo", "art_painting", held_out=True),
}


def _w(
    p: float,
    q: float,
    a: float = 0.0,
    c: float = 0.0,
    e: float = 0.0,
    d: float = 0.0,
    k: bool = False,
    n: float = 0.0,
) -> LossWeights:
    return LossWeights(
        pairwise=p,
        quantization=q,
        adversarial=a,
        classification=c,
        entropy=e,
        diversity=d,
        conditional_adversary=k,
        neighbours=n,
    )


# The tuning grid, per training mode and method: a few points each, the same budget for every method. TAH's
# reference weighting (pairwise 10, quantisation 0.8, adversarial 1) is in every TAH grid and reported on its own.
TAH_REFERENCE = "p10-q0.8-a1"
# MeTAH's chosen photo weights given the target's class mix (TrainConfig.target_class_mix) as counted on the seed's
# labelled validation queries: what a user who labelled a sample of their unlabelled images can give. A row of its
# own at 64 bits next to the unsupervised ones (it reads the validation labels' class counts; nothing else does).
VALIDATION_MIX = "validation-mix"
GIVEN_MIX_LABEL = "metah given the class mix"
# Grid points that were a method's product default before the grid chose another (mode -> method -> point -> the
# tables' label): their runs stay in the tables next to today's choice, paired with it, so that a reader sees what
# each change of default did on the test queries.
EARLIER_DEFAULTS: dict[str, dict[str, dict[str, str]]] = {
    "frozen": {
        "metah": {
            "p10-q0.8-a3-c1-e0.3-d0.3-cdan": "metah, the default until 2026-12-05 (no neighbours term)",
            "p10-q0.8-a3-c1-e0.3-d1-n0.3-cdan": "metah, the default on 2026-12-05 morning (entropy 0.3)",
        },
        "tah": {"p10-q0.8-a3": "tah, the default until 2026-12-05 noon (quantisation 0.8)"},
    },
}
GRID: dict[str, dict[str, dict[str, LossWeights]]] = {
    "finetune": {
        "source_only": {"p1-q0.1": _w(1, 0.1), "p1-q0.3": _w(1, 0.3), "p10-q0.8": _w(10, 0.8)},
        "tah": {
            TAH_REFERENCE: _w(10, 0.8, a=1),
            "p10-q0.8-a0.3": _w(10, 0.8, a=0.3),
            "p1-q0.1-a1": _w(1, 0.1, a=1),
            "p1-q0.1-a0.3": _w(1, 0.1, a=0.3),
        },
        "metah": {
            "p1-q0.1-a1-c1-e0.3": _w(1, 0.1, a=1, c=1, e=0.3),
            "p1-q0.1-a1-c1-e0.1": _w(1, 0.1, a=1, c=1, e=0.1),
            "p10-q0.8-a1-c1-e0.1": _w(10, 0.8, a=1, c=1, e=0.1),
            "p1-q0.1-a1-c1-e0.3-d0.1": _w(1, 0.1, a=1, c=1, e=0.3, d=0.1),
        },
    },
    "frozen": {
        "source_only": {"p1-q0.1": _w(1, 0.1), "p10-q0.1": _w(10, 0.1), "p10-q0.8": _w(10, 0.8)},
        "tah": {
            TAH_REFERENCE: _w(10, 0.8, a=1),
            "p10-q0.8-a0.3": _w(10, 0.8, a=0.3),
            "p10-q0.8-a3": _w(10, 0.8, a=3),
            "p1-q0.1-a1": _w(1, 0.1, a=1),
            # added with MeTAH's neighbours point below, so both keep the same number of points: a3 won at the
            # grid's edge
            "p10-q0.8-a10": _w(10, 0.8, a=10),
            # added with MeTAH's weaker-entropy point below, again one each: a lighter quantisation at a3
            "p10-q0.3-a3": _w(10, 0.3, a=3),
        },
        # MeTAH's frozen points have a class-conditional adversary (-cdan; the plain one matched classes wrongly, e.g.
        # cartoon dogs with photo persons): the previous grid's weights with it. The "unconditional" ablation and
        # knob (scripts/bench_knobs.py) measure what it adds.
        "metah": {
            "p10-q0.8-a1-c1-e0.1-d0.1-cdan": _w(10, 0.8, a=1, c=1, e=0.1, d=0.1, k=True),
            "p10-q0.8-a3-c1-e0.1-d0.1-cdan": _w(10, 0.8, a=3, c=1, e=0.1, d=0.1, k=True),
            "p10-q0.8-a1-c1-e0.3-d0.3-cdan": _w(10, 0.8, a=1, c=1, e=0.3, d=0.3, k=True),
            "p10-q0.8-a3-c1-e0.3-d0.3-cdan": _w(10, 0.8, a=3, c=1, e=0.3, d=0.3, k=True),
            # the neighbours term (SCAN's consistency with the target's nearest rows) with a stronger diversity
            # term, found by a MeTAH-only validation sweep (scripts/bench_knobs.py, benchmarks/retrieval-knobs)
            "p10-q0.8-a3-c1-e0.3-d1-n0.3-cdan": _w(10, 0.8, a=3, c=1, e=0.3, d=1, k=True, n=0.3),
            # the entropy term's weight around that point, from the seed-stability sweep (12 seeds on validation,
            # benchmarks/retrieval-knobs-split2): 0.1 kept cartoons and lifted sketches, 1 cost cartoons
            "p10-q0.8-a3-c1-e0.1-d1-n0.3-cdan": _w(10, 0.8, a=3, c=1, e=0.1, d=1, k=True, n=0.3),
        },
    },
}

# MeTAH with one part taken out, each derived from MeTAH's chosen weights (name -> what the tables call it).
ABLATION_LABELS = {
    "no-classifier": "metah without the classification loss",
    "no-entropy": "metah without the entropy (and diversity) term",
    "no-adversary": "metah without the adversary",
    "entropy-unramped": "metah with the entropy unramped",
    "unconditional": "metah with a plain (not class-conditional) adversary",
    "no-neighbours": "metah without the neighbours term",
}
ABLATIONS = {
    "no-classifier": lambda w: replace(w, classification=0.0),
    "no-entropy": lambda w: replace(w, entropy=0.0, diversity=0.0),
    "no-adversary": lambda w: replace(w, adversarial=0.0),
    "entropy-unramped": lambda w: replace(w, entropy_ramp=False),
    "unconditional": lambda w: replace(w, conditional_adversary=False),  # where the chosen weights have one
    "no-neighbours": lambda w: replace(w, neighbours=0.0),  # likewise
}


# ----------------------------------------------------------------------------------------------------------------
# Data: every task becomes a labelled source folder, a labelled target file list and per-seed split folders.


@dataclass(frozen=True)
class TaskFiles:
    source_dir: Path
    source: FileSet
    target: FileSet


@dataclass(frozen=True)
class Split:
    validation: np.ndarray
    test: np.ndarray
    train: np.ndarray
    train_dir: Path  # the unlabelled 80 %: a flat folder of symlinks


def task_files(name: str, work: Path, pacs: Path) -> TaskFiles:
    task = TASKS[name]
    if task.family == "photos":
        source_dir, target_dir = pacs / task.source, pacs / task.target
    else:
        source_dir, target_dir = (_digit_folder(domain, work) for domain in (task.source, task.target))
    source = list_labelled_folder(source_dir, what="source")
    return TaskFiles(source_dir, source, list_labelled_folder(target_dir, what="target"))


DIGIT_SUBSETS = {"mnist_0_5999": ("mnist", slice(0, 6000))}  # name -> (shipped domain, the images used)


def _digit_folder(domain: str, work: Path) -> Path:
    folder = work / "data" / domain
    if not (folder / ".complete").exists():
        name, part = DIGIT_SUBSETS.get(domain, (domain, slice(None)))
        write_image_folder(load_digits(name).take(np.arange(len(load_digits(name)))[part]), folder)
        (folder / ".complete").touch()
    return folder


SPLIT_PROTOCOLS = (1, 2)
VALIDATION_POOL_SEED = 20_261_204  # split protocol 2: draws the one validation tenth every seed shares


def split_target(name: str, target: FileSet, seed: int, work: Path, protocol: int = 1) -> Split:
    """A 10 / 10 / 80 split of the target into validation queries, test queries and training images.

    Protocol 1: each seed permutes the whole target, so one seed's test queries can be another seed's validation
    queries. Protocol 2: the validation tenth is the same for every seed (:data:`VALIDATION_POOL_SEED`), and each
    seed draws its test tenth and training images from the rest, so no test query is ever a validation query.
    """
    tenth = round(len(target) * 0.1)
    if protocol == 1:
        order = np.random.default_rng(seed).permutation(len(target))
    elif protocol == 2:
        pool = np.random.default_rng(VALIDATION_POOL_SEED).permutation(len(target))
        order = np.concatenate([pool[:tenth], np.random.default_rng(seed).permutation(pool[tenth:])])
    else:
        raise ValueError(f"unknown split protocol {protocol}; choose one of {SPLIT_PROTOCOLS}")
    validation, test, rest = np.sort(order[:tenth]), np.sort(order[tenth : 2 * tenth]), np.sort(order[2 * tenth :])
    version = "" if protocol == 1 else f"split{protocol}"
    train_dir = work / "splits" / name / version / f"seed{seed}" / "target_train"
    if not (train_dir / ".complete").exists():
        train_dir.mkdir(parents=True, exist_ok=True)
        for index in rest:
            path = target.paths[index]
            link = train_dir / f"{path.parent.name}_{path.name}"
            if not link.is_symlink():
                link.symlink_to(path.resolve())
        (train_dir / ".complete").touch()
    return Split(validation, test, rest, train_dir)


# ----------------------------------------------------------------------------------------------------------------
# One run: train, then score both query splits on both protocols.


@dataclass(frozen=True)
class RunSpec:
    task: str
    method: str
    bits: int
    seed: int
    variant: str
    weights: LossWeights
    stage: str  # "tune", "table" or "ablation": why the run exists (the choice reads validation rows only)
    config: tuple[tuple[str, Any], ...] = ()  # TrainConfig settings other than the defaults (scripts.bench_knobs)

    @property
    def key(self) -> str:
        return f"{self.task}/{self.method}/{self.bits}/{self.seed}/{self.variant}"


@dataclass(frozen=True)
class Settings:
    work: Path
    pacs: Path
    cache: Path
    iterations: int | None
    device: str
    threads: int
    artefact_check: int
    photo_backbone: str = PHOTO_BACKBONE
    split_protocol: int = 1  # split_target's; the committed tables of benchmarks/retrieval are protocol 1

    def split(self, task: str, seed: int) -> Split:
        """The task's split for ``seed`` under this benchmark's protocol."""
        return split_target(task, _files(task, self.work, self.pacs).target, seed, self.work, self.split_protocol)

    def scoring_device(self) -> str:
        """Where an exported artefact encodes the benchmark's images: the run's GPU when it has one, else the CPU."""
        return "cuda" if self.device != "cpu" and torch.cuda.is_available() else "cpu"

    def backbone(self, task: str) -> str:
        return "lenet" if TASKS[task].family == "digits" else self.photo_backbone

    def run_dir(self, key: str) -> Path:
        """A run's folder, per backbone: a run with another backbone never resumes from this one's checkpoint."""
        return self.work / "runs" / self.backbone(key.split("/")[0]) / key.replace("/", os.sep)


@cache
def _files(name: str, work: Path, pacs: Path) -> TaskFiles:
    return task_files(name, work, pacs)


@cache
def photo_features(
    name: str, work: Path, pacs: Path, cache_root: Path, backbone_name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen backbone's features of the plain source and target images (view 0), from the cache."""
    files = _files(name, work, pacs)
    backbone = build_backbone(backbone_name)
    feature_cache = FeatureCache(cache_root, backbone_name, backbone)
    tables = []
    for file_set in (files.source, files.target):
        keys, skipped = extract_features(file_set, backbone, feature_cache, 1, device=torch.device("cpu"), workers=0)
        if skipped:
            raise RuntimeError(f"{len(skipped)} file(s) of {name} did not decode: {skipped[:3]}")
        tables.append(torch.cat(list(FeatureTable(feature_cache, keys, 1, 2**31).plain())))
    return tables[0], tables[1]


@cache
def _digit_images(name: str, work: Path, pacs: Path) -> tuple[torch.Tensor, torch.Tensor]:
    files = _files(name, work, pacs)
    return decode_files(files.source, (32, 32)).images, decode_files(files.target, (32, 32), what="target").images


def signs(values: torch.Tensor) -> np.ndarray:
    """The binary codes (±1) of relaxed or projected values, as the exported encoder takes their sign."""
    return torch.where(values > 0, 1.0, -1.0).numpy()


def run_mode(spec: RunSpec) -> str:
    """The run's training mode: its task family's, unless the spec's config names one (``scripts.bench_gpu``)."""
    return str(dict(spec.config).get("mode", TASKS[spec.task].mode))


def _codes(spec: RunSpec, run_dir: Path, settings: Settings) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Codes of every source and target image, the way the exported artefact computes them, plus a check."""
    files = _files(spec.task, settings.work, settings.pacs)
    if run_mode(spec) == "finetune" and TASKS[spec.task].family == "digits":
        loaded = load_encoder(run_dir / "model.pt")  # the artefact itself
        source_images, target_images = _digit_images(spec.task, settings.work, settings.pacs)
        return encode_images(loaded.module, source_images), encode_images(loaded.module, target_images), {}
    if run_mode(spec) == "finetune":  # photos, backbone trained: no feature cache to score from, the artefact does
        device = settings.scoring_device()
        loaded = load_encoder(run_dir / "model.pt", device)
        source_codes, target_codes = (
            encode_files(loaded.module, file_set, loaded.input_size, device=device)
            for file_set in (files.source, files.target)
        )
        return source_codes, target_codes, {}  # the artefact's own codes: nothing to check them against
    source_features, target_features = photo_features(
        spec.task, settings.work, settings.pacs, settings.cache, settings.photo_backbone
    )
    projection = restore_network(run_dir / "checkpoint.pt").net.heads.hash.projection().eval()
    with torch.no_grad():
        source_codes, target_codes = signs(projection(source_features)), signs(projection(target_features))
    split = settings.split(spec.task, spec.seed)
    sample = split.test[: settings.artefact_check]
    loaded = load_encoder(run_dir / "model.pt")
    artefact = encode_files(loaded.module, files.target.take(sample), loaded.input_size)
    check = {
        "images": len(sample),
        "codes_equal": float(np.mean(np.all(artefact == target_codes[sample], axis=1))),
        "bits_equal": float(np.mean(artefact == target_codes[sample])),
    }
    return source_codes, target_codes, check


def _metrics(query: np.ndarray, query_labels: np.ndarray, db: np.ndarray, db_labels: np.ndarray) -> dict[str, float]:
    result = evaluate_retrieval(query, query_labels, db, db_labels)
    return {key: float(getattr(result, key)) for key in METRICS}


def run_config(spec: RunSpec, settings: Settings) -> TrainConfig:
    """The run's TrainConfig: the benchmark's settings for its task, then the spec's own (``config``) on top."""
    fields: dict[str, Any] = {
        "method": spec.method,
        "bits": spec.bits,
        "seed": spec.seed,
        "backbone": settings.backbone(spec.task),
        "mode": TASKS[spec.task].mode,
        "feature_cache": str(settings.cache),
        "loss_weights": spec.weights,
        "eval_queries": 100,
        "loader_workers": 0,
        "device": settings.device,
    }
    if settings.iterations:
        fields["iterations"] = settings.iterations
    own = dict(spec.config)
    if own.get("target_class_mix") == VALIDATION_MIX:
        own["target_class_mix"] = validation_mix(spec.task, spec.seed, settings)
    return TrainConfig(**{**fields, **own})


def validation_mix(task: str, seed: int, settings: Settings) -> dict[str, float]:
    """Each class's share of the seed's validation queries of ``task`` (their labels counted)."""
    target = _files(task, settings.work, settings.pacs).target
    return class_shares(target, settings.split(task, seed).validation)


def class_shares(files: FileSet, rows: np.ndarray | None = None) -> dict[str, float]:
    """Each class's share of ``files`` (of its ``rows`` when given), by their labels."""
    labels = files.labels if rows is None else files.labels[torch.from_numpy(rows)]
    counts = labels.bincount(minlength=len(files.classes)).tolist()
    return {name: count / len(labels) for name, count in zip(files.classes, counts, strict=True)}


def may_start(elapsed: float, longest: float, budget: float | None) -> bool:
    """Whether another run may start ``elapsed`` seconds into a ``budget`` (none: always), the longest finished run
    having taken ``longest`` seconds."""
    return budget is None or elapsed + longest <= budget


def one_run(spec: RunSpec, settings: Settings) -> list[dict[str, Any]]:
    """Train one configuration and return one record per query split (validation, test)."""
    begun = time.perf_counter()
    torch.set_num_threads(settings.threads)
    # TorchScript stays the artefact (CONTRACT); its deprecation notice would repeat once per run
    warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.* is deprecated")
    task = TASKS[spec.task]
    files = _files(spec.task, settings.work, settings.pacs)
    split = settings.split(spec.task, spec.seed)
    config = run_config(spec, settings)
    run_dir = settings.run_dir(spec.key)
    started = time.perf_counter()
    result = train(config, files.source_dir, split.train_dir, run_dir, show_progress=False)
    seconds = time.perf_counter() - started
    source_codes, target_codes, check = _codes(spec, run_dir, settings)
    target_labels, source_labels = shared_label_ids(files.target, files.source)
    common = {
        "key": spec.key,
        "stage": spec.stage,
        "task": spec.task,
        "family": task.family,
        "method": spec.method,
        "bits": spec.bits,
        "seed": spec.seed,
        "variant": spec.variant,
        "loss_weights": spec.weights.to_dict(),
        "config": dict(spec.config),
        "backbone": result.metrics["backbone"],
        "mode": result.metrics["mode"],
        "iterations": result.metrics["iterations"],
        "lr": result.metrics["lr"],
        "train_seconds": round(seconds, 2),
        "run_seconds": round(time.perf_counter() - begun, 2),  # data, training and scoring: what a plan costs
        "device": result.metrics["device"],
        "threads": settings.threads,
        "split_protocol": settings.split_protocol,
        "artefact_check": check,
        **describe_run(),
    }
    records = []
    for split_name in SPLITS:
        queries = getattr(split, split_name)
        record = {**common, "split": split_name}
        record["target_vs_source"] = _metrics(
            target_codes[queries], target_labels[queries], source_codes, source_labels
        )
        record["target_vs_target"] = _metrics(
            target_codes[queries], target_labels[queries], target_codes[split.train], target_labels[split.train]
        )
        record.update(record["target_vs_source"])  # the headline protocol at the top level
        records.append(record)
    return records


def cosine_reference(name: str, seed: int, settings: Settings, run_dir: Path | None) -> dict[str, Any]:
    """No hashing: the backbone's continuous features ranked by cosine similarity, target queries vs source.

    Photos: the frozen pretrained features (what every photo run's hash layer reads). Digits: the features of the
    trained MeTAH run's own backbone (``run_dir``), so the line shows what the sign and the bits cost or gain.
    """
    torch.set_num_threads(settings.threads)
    files = _files(name, settings.work, settings.pacs)
    split = settings.split(name, seed)
    if TASKS[name].family == "photos":
        source_features, target_features = photo_features(
            name, settings.work, settings.pacs, settings.cache, settings.photo_backbone
        )
    else:
        assert run_dir is not None
        net = restore_network(run_dir / "checkpoint.pt").net.eval()
        source_images, target_images = _digit_images(name, settings.work, settings.pacs)
        with torch.no_grad():
            source_features = torch.cat([net.features(to_model_input(c)) for c in source_images.split(1024)])
            target_features = torch.cat([net.features(to_model_input(c)) for c in target_images.split(1024)])
    target_labels, source_labels = shared_label_ids(files.target, files.source)
    scores = {
        split_name: cosine_map(
            target_features[getattr(split, split_name)],
            target_labels[getattr(split, split_name)],
            source_features,
            source_labels,
        )
        for split_name in SPLITS
    }
    return {
        "key": f"{name}/{seed}",
        "task": name,
        "seed": seed,
        "split_protocol": settings.split_protocol,
        **scores,
        **describe_run(),
    }


# ----------------------------------------------------------------------------------------------------------------
# Plans: which runs each stage needs, given what the raw file already holds.


Choice = dict[tuple[str, str], str]  # (training mode, method) -> the grid variant chosen


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def chosen(runs: Sequence[dict[str, Any]], tasks: Sequence[str], tune_seeds: Sequence[int]) -> Choice:
    """Per training mode and method, the grid variant with the best mean **validation** MAP@all at 64 bits over
    that mode's tasks and the tuning seeds; only variants run on every (task, seed) compete."""
    best: dict[tuple[str, str], str] = {}
    for mode in {TASKS[t].mode for t in tasks}:  # every tuned task of the mode, whichever tasks are asked for
        mode_tasks = [t for t, spec in TASKS.items() if spec.mode == mode and not spec.held_out]
        for method in METHODS:
            scores: dict[str, dict[tuple[str, int], float]] = {}
            for run in runs:
                if (
                    run["split"] == "validation"
                    and run["method"] == method
                    and run["bits"] == 64
                    and run["task"] in mode_tasks
                    and run["seed"] in tune_seeds
                    and run["variant"] in GRID[mode][method]
                ):
                    scores.setdefault(run["variant"], {})[(run["task"], run["seed"])] = run["map_all"]
            needed = len(mode_tasks) * len(tune_seeds)
            complete = {v: statistics.fmean(s.values()) for v, s in scores.items() if len(s) == needed}
            if complete:
                best[mode, method] = max(sorted(complete), key=lambda v: complete[v])
    return best


def plan(stage: str, args: argparse.Namespace, done: set[str], choice: Choice) -> list[RunSpec]:
    """The runs ``stage`` needs for ``args.tasks`` that are not in ``done`` (keys), given the weights chosen."""
    specs: list[RunSpec] = []
    if stage == "tune":
        for task in (t for t in args.tasks if not TASKS[t].held_out):
            mode = TASKS[task].mode
            for method in args.methods:
                for variant, weights in GRID[mode][method].items():
                    specs += [RunSpec(task, method, 64, s, variant, weights, stage) for s in args.tune_seeds]
    else:
        for task in args.tasks:
            mode = TASKS[task].mode
            missing = [m for m in args.methods if (mode, m) not in choice]
            if missing:
                raise SystemExit(f"{task}: tuning is incomplete for {missing}; run --stage tune first")
            picked = {m: choice[mode, m] for m in args.methods}
            if stage == "table":
                for method, variant in picked.items():
                    weights = GRID[mode][method][variant]
                    for bits in [64] if TASKS[task].held_out else args.bits:  # held-out shifts: 64 bits only
                        seeds = args.seeds[: args.seeds_64] if bits == 64 else args.seeds[:3]
                        specs += [RunSpec(task, method, bits, s, variant, weights, stage) for s in seeds]
                if "tah" in args.methods:
                    reference = GRID[mode]["tah"][TAH_REFERENCE]
                    seeds = args.seeds[: args.seeds_64]
                    specs += [RunSpec(task, "tah", 64, s, TAH_REFERENCE, reference, stage) for s in seeds]
                if "metah" in args.methods and TASKS[task].family == "photos":
                    variant, mixed = f"{picked['metah']}+{VALIDATION_MIX}", (("target_class_mix", VALIDATION_MIX),)
                    weights = GRID[mode]["metah"][picked["metah"]]
                    seeds = args.seeds[: args.seeds_64]
                    specs += [RunSpec(task, "metah", 64, s, variant, weights, stage, mixed) for s in seeds]
            elif stage == "ablation":  # on the held-out shifts too: no choice reads them
                base = picked["metah"]
                for name, change in ABLATIONS.items():
                    weights = change(GRID[mode]["metah"][base])
                    if weights == GRID[mode]["metah"][base]:
                        continue  # nothing to take out
                    specs += [RunSpec(task, "metah", 64, s, f"{base}/{name}", weights, stage) for s in args.seeds[:3]]
    unique = {spec.key: spec for spec in specs if spec.key not in done}
    return list(unique.values())


def whole_plan(args: argparse.Namespace, choice: Choice) -> list[RunSpec]:
    """Every run of the tune, table and ablation stages from scratch, had tuning chosen ``choice`` (the tuning
    runs of the chosen weights count as the table's first seeds, as in a real benchmark)."""
    specs: list[RunSpec] = []
    for stage in ("tune", "table", "ablation"):
        specs += plan(stage, args, {spec.key for spec in specs}, choice)
    return specs


def execute(
    specs: Sequence[RunSpec], settings: Settings, processes: int, out: Path, budget: float | None = None
) -> list[RunSpec]:
    """Run the specs in ``processes`` worker processes, in order; append each run's lines as it finishes.

    With ``budget`` (seconds from now), a run is started only while the longest run finished so far would still
    end inside it (a lent GPU's time is counted): returns the specs left unstarted.
    """
    if not specs:
        return []
    for task, seed in sorted({(spec.task, spec.seed) for spec in specs}):  # before the workers read them
        settings.split(task, seed)
    started = time.perf_counter()
    longest = 0.0
    left: list[RunSpec] = []
    with ProcessPoolExecutor(max_workers=processes, mp_context=get_context("spawn")) as pool:
        queue: Iterator[RunSpec] = iter(specs)
        pending = {pool.submit(one_run, spec, settings): spec for spec in islice(queue, processes)}
        finished = 0
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                spec = pending.pop(future)
                records = [{**record, "processes": processes} for record in future.result()]
                with (out / "runs.jsonl").open("a") as fh:
                    fh.writelines(json.dumps(record) + "\n" for record in records)
                finished += 1
                longest = max(longest, records[0]["run_seconds"])
                print(  # validation only: test scores are read by the report, not while choosing
                    f"[{finished}/{len(specs)} {time.perf_counter() - started:.0f}s] {spec.key}: validation "
                    f"{records[0]['map_all']:.4f} ({records[0]['train_seconds']:.0f}s)",
                    flush=True,
                )
                following = next(queue, None)
                if following is None:
                    continue
                if not may_start(time.perf_counter() - started, longest, budget):
                    left += [following, *queue]
                    continue
                pending[pool.submit(one_run, following, settings)] = following
    return left


# ----------------------------------------------------------------------------------------------------------------
# Report: every table from the raw lines.


COMPARISONS = (  # (A, B): "A beats B" when the paired interval of A − B lies above zero
    ("metah", "tah"),
    ("metah", "tah (reference weights)"),
    ("metah", "source_only"),
    ("tah", "source_only"),
    ("tah (reference weights)", "source_only"),
    (GIVEN_MIX_LABEL, "metah"),
    (GIVEN_MIX_LABEL, "tah"),
)


def _protocol_sentence(runs: Sequence[dict[str, Any]]) -> str:
    protocols = sorted({int(r.get("split_protocol", 1)) for r in runs})
    if protocols == [2]:
        return (
            "Split protocol 2: one validation tenth of each target domain serves every seed; each seed draws its "
            "test tenth and training images from the rest, so no test query was ever a validation query."
        )
    return (
        f"Split protocol(s) {', '.join(map(str, protocols)) or '1'}: under protocol 1 each seed permutes the whole "
        "target, so part of a seed's test queries were validation queries of a tuning seed (a small optimistic bias "
        "shared by every method); protocol 2 removes it."
    )


def provenance(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Which commits, machines, commands and dates the raw lines come from, and this report's own."""
    here = describe_run()
    if not runs:
        return [f"No runs yet. Report written at commit `{here['commit']}` on {here['date']}."]
    dates = sorted(r["date"] for r in runs)
    return [
        f"Report written at commit `{here['commit']}` on {here['date']} by `{here['command']}`. Raw lines: "
        f"{len(runs)}, from {dates[0]} to {dates[-1]}; commits "
        f"{', '.join(f'`{c}`' for c in sorted({r['commit'] for r in runs}))}; machines: "
        f"{'; '.join(sorted({r['machine'] for r in runs}))}; device(s) "
        f"{', '.join(sorted({r['device'] for r in runs}))}, {', '.join(sorted({str(r['threads']) for r in runs}))} "
        f"torch thread(s) per run; backbone(s) {', '.join(sorted({r['backbone'] for r in runs}))}.",
    ]


def product_choice(mode: str) -> Choice:
    """The grid points that are the product's presets (:func:`model.objective.method_weights`) in ``mode``."""
    choice = {}
    for method in METHODS:
        names = [name for name, weights in GRID[mode][method].items() if weights == method_weights(method, mode)]
        if not names:
            raise SystemExit(f"the {mode} {method} default is not a point of the benchmark grid")
        choice[mode, method] = names[0]
    return choice


def _defaults_check(choice: Choice) -> list[str]:
    """Whether the product's presets (model.objective) are the weights chosen here, one line per mode/method."""
    lines = []
    for (mode, method), variant in sorted(choice.items()):
        same = method_weights(method, mode) == GRID[mode][method][variant]
        verdict = "the product default" if same else "**not** the product default (model/objective.py differs)"
        lines.append(f"- {mode} {method}: chosen {variant} is {verdict}")
    return lines


def report(out: Path, tasks: Sequence[str], tune_seeds: Sequence[int]) -> str:
    runs, cosine = read_lines(out / "runs.jsonl"), read_lines(out / "cosine.jsonl")
    choice = chosen(runs, tasks, tune_seeds)
    lines = [
        "# Cross-domain retrieval benchmark",
        "",
        "Generated by `python -m scripts.bench --stage report` from `runs.jsonl` and `cosine.jsonl` (raw: one JSON "
        "line per run and query split, each with its commit, command, machine and date). The source domain is the "
        "labelled training set and the database; each seed splits the target domain into 10 % validation queries, "
        "10 % test queries and 80 % unlabelled training images. Every choice was made on validation MAP@all; every "
        "number below is on the **test** queries. Mean ± sample std (n − 1) over seeds.",
        "",
        _protocol_sentence(runs),
        "",
        f"*{GIVEN_MIX_LABEL}* (photo tasks, 64 bits): MeTAH's chosen weights given the target's class shares as "
        "counted on the seed's labelled validation queries (`TrainConfig.target_class_mix`, the diversity term's "
        "aim instead of equal shares): what a user who labelled a sample of their unlabelled images can give. Not "
        "an unsupervised result: it reads the validation labels' class counts.",
        "",
        *provenance(runs),
        "",
        "## Chosen weights (validation MAP@all, 64 bits, mean over the mode's tasks and seeds "
        f"{', '.join(map(str, tune_seeds))})",
        "",
        "| mode | method | variant | validation MAP@all | chosen |",
        "|---|---|---|---:|---|",
    ]
    for mode in sorted({TASKS[t].mode for t in tasks}):
        mode_tasks = [t for t, spec in TASKS.items() if spec.mode == mode and not spec.held_out]
        for method in METHODS:
            for variant in GRID[mode][method]:
                values = [
                    r["map_all"]
                    for r in runs
                    if r["split"] == "validation"
                    and r["task"] in mode_tasks
                    and r["method"] == method
                    and r["variant"] == variant
                    and r["bits"] == 64
                    and r["seed"] in tune_seeds
                ]
                if values:
                    mark = "**yes**" if choice.get((mode, method)) == variant else ""
                    lines.append(f"| {mode} | {method} | {variant} | {statistics.fmean(values):.4f} | {mark} |")
    lines += ["", *_defaults_check(choice)]
    tests = [r for r in runs if r["split"] == "test"]
    for task in tasks:
        mode = TASKS[task].mode
        cells: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for run in tests:
            if run["task"] != task:
                continue
            label = run["method"] if choice.get((mode, run["method"])) == run["variant"] else None
            if label is None:
                label = EARLIER_DEFAULTS.get(mode, {}).get(run["method"], {}).get(run["variant"])
            if run["method"] == "tah" and run["variant"] == TAH_REFERENCE:
                label = "tah (reference weights)" if label is None else label
            if run["method"] == "metah" and run["variant"] == f"{choice.get((mode, 'metah'))}+{VALIDATION_MIX}":
                label = GIVEN_MIX_LABEL
            if run["stage"] == "ablation":  # only the ablations of the MeTAH weights chosen now
                base, _, part = run["variant"].rpartition("/")
                label = ABLATION_LABELS[part] if choice.get((mode, "metah")) == base else None
            if label is not None:
                cells.setdefault((run["bits"], label), []).append(run)
        if not cells:
            continue
        held_out = " — held out: no choice looked at this shift" if TASKS[task].held_out else ""
        lines += ["", f"## {task} (test queries){held_out}", ""]
        for protocol in PROTOCOLS:
            lines += [
                f"{protocol.replace('_', ' ')}:",
                "",
                "| bits | method | MAP@all | MAP@r≤2 | P@r≤2 (empty ball = 0) | seeds | train s |",
                "|---:|---|---|---|---|---:|---:|",
            ]
            for (bits, label), members in sorted(cells.items()):
                shown = [format_mean_std([m[protocol][key] for m in members]) for key in METRICS]
                seconds = statistics.fmean(m["train_seconds"] for m in members)
                lines.append(f"| {bits} | {label} | {' | '.join(shown)} | {len(members)} | {seconds:.0f} |")
            lines.append("")
        lines += [
            "Paired comparisons (test MAP@all, target vs source, same seeds and splits; 95 % t interval; against an "
            "ablation: what the part taken out adds, on the ablation's seeds):",
            "",
        ]
        lines += ["| bits | comparison | mean difference | 95 % CI | holds |", "|---:|---|---:|---|---|"]
        earlier = [
            (method, label) for method, points in EARLIER_DEFAULTS.get(mode, {}).items() for label in points.values()
        ]
        for bits in sorted({bits for bits, _ in cells}):
            for first, rival in (*COMPARISONS, *earlier, *(("metah", label) for label in ABLATION_LABELS.values())):
                mine = {m["seed"]: m["map_all"] for m in cells.get((bits, first), [])}
                theirs = {m["seed"]: m["map_all"] for m in cells.get((bits, rival), [])}
                seeds = sorted(set(mine) & set(theirs))
                if len(seeds) < 2:
                    continue
                diff = paired_difference([mine[s] for s in seeds], [theirs[s] for s in seeds])
                lines.append(
                    f"| {bits} | {first} − {rival} | {diff['mean']:+.4f} | [{diff['low']:+.4f}, "
                    f"{diff['high']:+.4f}] | {'yes' if diff['holds'] else 'no'} |"
                )
        refs = [c["test"] for c in cosine if c["task"] == task]
        if refs:
            reference = format_mean_std(refs)
            lines += ["", f"No hashing (cosine similarity of the backbone's features): {reference} MAP@all."]
    return "\n".join([*lines, *_stage_times(read_lines(out / "timing.jsonl"))]) + "\n"


def _stage_times(timings: Sequence[dict[str, Any]]) -> list[str]:
    """The wall time of every benchmark stage this folder's raw lines were written by, as recorded."""
    stages = [t for t in timings if t.get("timing") == "stage"]
    if not stages:
        return []
    lines = [
        "",
        "## Time",
        "",
        "Wall time of each stage as it ran (`timing.jsonl`; `all` is one whole `--stage all` command, the no-hashing "
        "reference and the report included; a resumed stage counts only the runs it still had to do).",
        "",
        "| date | commit | family | stage | runs | steps per run | processes × threads | wall | load average |",
        "|---|---|---|---|---:|---:|---|---:|---|",
    ]
    for t in stages:
        steps = t["iterations"] or "default"
        runs = "" if t["runs"] is None else t["runs"]
        load = ", ".join(f"{value:.2f}" for value in t.get("load_average", []))
        lines.append(
            f"| {t['date']} | `{t['commit']}` | {t['family']} | {t['stage']} | {runs} | {steps} | "
            f"{t['processes']} × {t['threads']} | {t['wall_seconds'] / 60:.1f} min | {load} |"
        )
    return lines


TIMINGS = ("frozen-cold", "frozen-warm", "finetune-epoch")


def time_training(args: argparse.Namespace, settings: Settings, which: Sequence[str]) -> None:
    """Wall time of the product's default training on photo → sketch (seed 0 split): a frozen run with an empty
    feature cache, the same run with the cache it filled, and one epoch of the source (⌈photos / batch⌉ steps)
    in finetune mode. One JSON line each in ``OUT/timing.jsonl``, with the machine's load average."""
    files = _files("photo-sketch", settings.work, settings.pacs)
    split = settings.split("photo-sketch", 0)
    cache_dir = settings.work / "timing-cache"
    for name in which:
        config = TrainConfig(seed=0, feature_cache=str(cache_dir), device=settings.device)
        if name == "frozen-cold" and cache_dir.exists():
            shutil.rmtree(cache_dir)
        if name == "finetune-epoch":
            config = config.override(mode="finetune", iterations=math.ceil(len(files.source) / config.batch_size))
        run_dir = settings.work / "timing" / name
        shutil.rmtree(run_dir, ignore_errors=True)
        started = time.perf_counter()
        result = train(config, files.source_dir, split.train_dir, run_dir, show_progress=False)
        line = {
            "task": "photo-sketch",
            "timing": name,
            "wall_seconds": round(time.perf_counter() - started, 1),
            "train_seconds": result.metrics["train_seconds"],
            "iterations": result.metrics["iterations"],
            "lr": result.metrics["lr"],
            "batch_size": config.batch_size,
            "backbone": result.metrics["backbone"],
            "mode": result.metrics["mode"],
            "device": result.metrics["device"],
            "feature_views": config.feature_views,
            "source_images": result.metrics["source_images"],
            "target_images": result.metrics["target_images"],
            "torch_threads": torch.get_num_threads(),
            **describe_run(),
        }
        with (args.out / "timing.jsonl").open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)


def _warm_domain(folder: Path, settings: Settings, views: int) -> tuple[str, int, float]:
    torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    backbone = build_backbone(settings.photo_backbone)
    files = list_labelled_folder(folder, what=folder.name)
    product = TrainConfig(backbone=settings.photo_backbone, feature_cache=str(settings.cache))
    feature_cache = feature_cache_for(product, backbone)
    _, skipped = extract_features(files, backbone, feature_cache, views, device=torch.device("cpu"), workers=0)
    if skipped:
        raise RuntimeError(f"{len(skipped)} file(s) of {folder} did not decode: {skipped[:3]}")
    return folder.name, len(files), time.perf_counter() - started


def warm_feature_cache(tasks: Sequence[str], settings: Settings, processes: int) -> None:
    """Every view a photo run reads (the product's ``feature_views`` and view recipe), one domain per process, so
    that the runs started next in parallel find them cached instead of computing the same features twice; a file
    that does not decode stops the benchmark here."""
    names = {name for t in tasks for name in (TASKS[t].source, TASKS[t].target)}  # largest first: balanced
    folders = sorted((settings.pacs / n for n in names), key=lambda f: -sum(1 for _ in f.rglob("*")))
    if not folders:
        return
    views = TrainConfig().feature_views
    with ProcessPoolExecutor(max_workers=processes, mp_context=get_context("spawn")) as pool:
        n = len(folders)
        for domain, images, seconds in pool.map(_warm_domain, folders, [settings] * n, [views] * n):
            print(f"features: {domain} ({images} images × {views} views, {settings.photo_backbone}) {seconds:.0f} s")


def plot_map_by_bits(out: Path, tasks: Sequence[str], tune_seeds: Sequence[int]) -> None:
    """``map_by_bits.png``: test MAP@all (target vs source) per task, bits and method, sample-std error bars."""
    runs = [r for r in read_lines(out / "runs.jsonl") if r["split"] == "test"]
    choice = chosen(read_lines(out / "runs.jsonl"), tasks, tune_seeds)
    shown = [t for t in tasks if any(r["task"] == t for r in runs)]
    if not shown:
        return
    figure = Figure(figsize=(4.5 * len(shown), 3.8))
    for position, task in enumerate(shown, start=1):
        axis = figure.add_subplot(1, len(shown), position)
        mode = TASKS[task].mode
        bits_list = sorted({r["bits"] for r in runs if r["task"] == task})
        for offset, method in enumerate(METHODS):
            values = {
                bits: [
                    r["map_all"]
                    for r in runs
                    if r["task"] == task
                    and r["method"] == method
                    and r["bits"] == bits
                    and r["variant"] == choice.get((mode, method))
                ]
                for bits in bits_list
            }
            xs = [i + (offset - 1) * 0.27 for i, bits in enumerate(bits_list) if values[bits]]
            stats = [mean_std(v) for v in values.values() if v]
            axis.bar(xs, [m for m, _ in stats], 0.27, yerr=[s for _, s in stats], capsize=3, label=method)
        axis.set_xticks(range(len(bits_list)), [f"{b} bits" for b in bits_list])
        axis.set_ylim(0, 1)
        axis.set_title(f"{task}: test MAP@all")
        axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "map_by_bits.png", dpi=100)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    stages = ["tune", "table", "ablation", "cosine", "report", "all", "time"]
    parser.add_argument("--stage", choices=stages, required=True)
    parser.add_argument("--family", choices=["digits", "photos", "all"], default="all")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=None)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--bits", nargs="+", type=int, default=[16, 32, 64])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="see --seeds-64; others: 3")
    parser.add_argument("--seeds-64", type=int, default=5, help="how many of --seeds the 64-bit table rows take")
    parser.add_argument("--tune-seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--iterations", type=int, default=None, help="override every run's steps (stated)")
    parser.add_argument("--processes", type=int, default=None, help="runs at once (default: CPU cores)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--split-protocol", type=int, choices=SPLIT_PROTOCOLS, default=1, help="split_target's")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: benchmarks/retrieval (protocol 1), benchmarks/retrieval-split2 (protocol 2)",
    )
    parser.add_argument("--work", type=Path, default=Path("var/bench"))
    parser.add_argument("--pacs", type=Path, default=Path("../shared/data/pacs"))
    parser.add_argument("--cache", type=Path, default=Path("var/feature-cache"))
    parser.add_argument("--timings", nargs="+", choices=TIMINGS, default=list(TIMINGS), help="--stage time")
    parser.add_argument("--artefact-check", type=int, default=32, help="photo test images encoded by model.pt")
    parser.add_argument(
        "--photo-backbone", choices=PHOTO_BACKBONES, default=PHOTO_BACKBONE, help="frozen photo runs; own --out"
    )
    args = parser.parse_args(argv)
    if args.tasks is None:
        args.tasks = [t for t, spec in TASKS.items() if args.family in ("all", spec.family)]
    if args.out is None:
        args.out = Path(
            "benchmarks/retrieval" if args.split_protocol == 1 else f"benchmarks/retrieval-split{args.split_protocol}"
        )
    return args


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = args.work.resolve()
    settings = Settings(
        args.work,
        args.pacs.resolve(),
        args.cache.resolve(),
        args.iterations,
        args.device,
        args.threads,
        args.artefact_check,
        args.photo_backbone,
        args.split_protocol,
    )
    processes = args.processes or max(1, (os.cpu_count() or 1) // args.threads)
    if args.stage in ("tune", "table", "ablation", "all"):  # features and folders once, before the runs read them
        warm_feature_cache([t for t in args.tasks if TASKS[t].family == "photos"], settings, processes)
        for task in args.tasks:
            _files(task, settings.work, settings.pacs)
    stages = ["tune", "table", "ablation", "cosine", "report"] if args.stage == "all" else [args.stage]
    begun = time.perf_counter()
    for stage in stages:
        started = time.perf_counter()
        if stage in ("tune", "table", "ablation"):
            runs = read_lines(args.out / "runs.jsonl")
            choice = chosen(runs, args.tasks, args.tune_seeds)
            specs = plan(stage, args, {run["key"] for run in runs}, choice)
            print(f"{stage}: {len(specs)} run(s) on {processes} process(es) × {args.threads} thread(s)", flush=True)
            execute(specs, settings, processes, args.out)
            record_stage(args, stage, len(specs), time.perf_counter() - started, processes)
        elif stage == "time":
            time_training(args, settings, args.timings)
        elif stage == "cosine":
            write_cosine(args, settings)
        else:
            (args.out / "results.md").write_text(report(args.out, args.tasks, args.tune_seeds))
            plot_map_by_bits(args.out, args.tasks, args.tune_seeds)
        print(f"{stage}: {time.perf_counter() - started:.0f} s", flush=True)
    if args.stage == "all":
        record_stage(args, "all", None, time.perf_counter() - begun, processes)
        (args.out / "results.md").write_text(report(args.out, args.tasks, args.tune_seeds))  # with its own time


def record_stage(args: argparse.Namespace, stage: str, runs: int | None, seconds: float, processes: int) -> None:
    """One ``timing.jsonl`` line per stage executed (``all``: the whole command, cosine and report included)."""
    line = {
        "timing": "stage",
        "stage": stage,
        "family": args.family,
        "tasks": list(args.tasks),
        "runs": runs,
        "iterations": args.iterations,
        "processes": processes,
        "threads": args.threads,
        "wall_seconds": round(seconds, 1),
        **describe_run(),
    }
    with (args.out / "timing.jsonl").open("a") as fh:
        fh.write(json.dumps(line) + "\n")


def write_cosine(args: argparse.Namespace, settings: Settings) -> None:
    runs = read_lines(args.out / "runs.jsonl")
    path = args.out / "cosine.jsonl"
    done = {line["key"] for line in read_lines(path)}
    choice = chosen(runs, args.tasks, args.tune_seeds)
    for task in args.tasks:
        for seed in args.seeds[:3]:
            if f"{task}/{seed}" in done:
                continue
            run_dir = None
            if TASKS[task].family == "digits":
                variant = choice[TASKS[task].mode, "metah"]
                run_dir = settings.run_dir(f"{task}/metah/64/{seed}/{variant}")
            with path.open("a") as fh:
                fh.write(json.dumps(cosine_reference(task, seed, settings, run_dir)) + "\n")


if __name__ == "__main__":
    main()
