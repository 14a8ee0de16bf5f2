"""Training configuration: one typed object, built from defaults, an optional file and CLI overrides."""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from model.errors import ConfigError
from model.heads import check_bits
from model.objective import LossWeights, method_weights

AVERAGE_SPAN = 6  # the weight average covers at most 1/AVERAGE_SPAN of a run
CHECKPOINTS_PER_RUN = 10  # a run that leaves checkpoint_every unset saves this many times, or more
MAX_CHECKPOINT_EVERY = 200  # ... and at least every this many steps
MODES = ("auto", "frozen", "finetune")


@dataclass(frozen=True)
class Schedule:
    """A training mode's default length and learning rate (what ``iterations`` and ``lr`` left unset mean)."""

    iterations: int
    lr: float


# finetune: the digit benchmark's settings. frozen: the heads alone on cached features learn more from a longer
# run at a higher rate (PACS validation queries, benchmarks/retrieval-knobs: at 3·10⁻³, 2,400 / 3,600 / 4,800
# steps score 0.697 / 0.701 / 0.703 against 0.662 for 1,200 at 10⁻³, a plateau; the middle of it).
MODE_SCHEDULES = {"finetune": Schedule(1200, 1e-3), "frozen": Schedule(3600, 3e-3)}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. The defaults give a good digit model and a good photo model.

    ``backbone`` and ``mode`` may be ``"auto"``; :func:`model.choice.resolve` replaces them with what a run uses
    (and that is what checkpoints and artefacts record).

    ``iterations`` and ``lr`` may be ``None``: the resolved mode's :data:`MODE_SCHEDULES` entry (a frozen run
    trains the heads longer and faster than a fine-tune); :attr:`steps` and :attr:`learning_rate` read them.

    ``batch_size`` is per domain and per process: one step sees ``batch_size`` source and ``batch_size``
    target images in one shared forward pass (times the number of processes under DDP).
    """

    method: str = "metah"
    bits: int = 64
    backbone: str = "auto"  # model.choice: lenet for small digit-like images, efficientnet_lite0 otherwise
    backbone_weights: str | None = None
    mode: str = "auto"  # frozen (cached backbone features) or finetune; auto: frozen on CPU for pretrained
    hash_hidden: int = 0  # width of a hidden ReLU layer before the hash projection; 0: linear projection
    hash_dropout: float = 0.0  # share of the backbone features the hash layer drops in training
    backbone_lr_mult: float = 0.1  # finetune: a pretrained backbone learns at lr × this (random ones at lr)
    feature_views: int = 2  # frozen: views cached per image, the plain one plus augmented ones (PACS validation)
    feature_grey: float = 0.0  # frozen: probability that an augmented view is greyscale
    # frozen: probability that an augmented view is redrawn as line art or a flat-colour cartoon (PACS validation:
    # benchmarks/retrieval-knobs)
    feature_drawing: float = 0.5
    feature_cache: str | None = None  # frozen: cache folder (default: $METAH_FEATURE_CACHE or ~/.cache/metah)
    adapt_batch_norm: bool = False  # frozen: re-estimate the backbone's batch-norm statistics on source + target
    loader_workers: int = -1  # decoding processes; -1: one per two CPU cores, at least one, at most four
    memory_budget_mb: int = 1024  # decoded training images (or features) up to this size are held in memory
    iterations: int | None = None  # None: the mode's default (MODE_SCHEDULES)
    seed: int = 0
    batch_size: int = 64
    lr: float | None = None  # None: the mode's default (MODE_SCHEDULES)
    lr_gamma: float = 10.0
    lr_power: float = 0.75
    weight_decay: float = 0.0
    grl_alpha: float = 10.0
    augment: bool = True
    augment_scale: tuple[float, float] = (0.85, 1.15)  # zoom range of the random affine (> 1 enlarges)
    ema_decay: float = 0.995  # decay of the weights' exponential moving average (exported); 0: the last iterate
    loss_weights: LossWeights | None = None
    # The unlabelled target's class shares when they are known (say, counted on a sample someone labelled): class
    # name -> share (any scale; every source class named). The diversity term then pulls the target's predicted
    # class mix toward them instead of toward equal shares (model.objective), which files a group of sketches among
    # the houses and persons PACS's sketches hardly have (docs/photos-tried.md).
    target_class_mix: dict[str, float] | None = None
    checkpoint_every: int | None = None  # None: CHECKPOINTS_PER_RUN per run, at most MAX_CHECKPOINT_EVERY apart
    log_every: int = 10
    device: str = "auto"
    eval_queries: int = 1000
    extra: dict[str, Any] = field(default_factory=dict)

    def _schedule(self, name: str) -> Schedule:
        if self.mode not in MODE_SCHEDULES:
            raise ConfigError(f"{name} of an unresolved mode {self.mode!r}: resolve the mode first (model.choice)")
        return MODE_SCHEDULES[self.mode]

    @property
    def steps(self) -> int:
        """The run's length: ``iterations``, else the mode's default (the mode must be resolved then)."""
        return self.iterations if self.iterations is not None else self._schedule("iterations").iterations

    @property
    def learning_rate(self) -> float:
        """The heads' learning rate: ``lr``, else the mode's default (the mode must be resolved then)."""
        return self.lr if self.lr is not None else self._schedule("lr").lr

    def scheduled(self) -> TrainConfig:
        """This config with ``iterations`` and ``lr`` filled in from the (resolved) mode, as checkpoints record."""
        return replace(self, iterations=self.steps, lr=self.learning_rate)

    @property
    def checkpoint_interval(self) -> int:
        """Steps between checkpoints: ``checkpoint_every``, else a tenth of the run's length (once the mode, and so
        the length, is resolved), at most :data:`MAX_CHECKPOINT_EVERY`: 120 for a 1,200-step run, 200 for 3,600."""
        if self.checkpoint_every is not None:
            return self.checkpoint_every
        return max(1, min(MAX_CHECKPOINT_EVERY, self.steps // CHECKPOINTS_PER_RUN))

    @property
    def applied_ema_decay(self) -> float:
        """The decay the run's :class:`model.ema.WeightEMA` applies: ``ema_decay`` (the requested one, the name
        config files, checkpoints and artefacts carry), lowered for short runs so that the average spans at most
        the last sixth of the steps (horizon ``1 / (1 - decay)``): 0.995 at either mode's default length, 0.94
        for a 100-step trial."""
        return max(0.0, min(self.ema_decay, 1.0 - AVERAGE_SPAN / self.steps))

    @property
    def weights(self) -> LossWeights:
        """The explicit loss weights, or the method's preset for the training mode."""
        return self.loss_weights if self.loss_weights is not None else method_weights(self.method, self.mode)

    def validated(self) -> TrainConfig:
        """Return self after checking every field a user can get wrong (raises ConfigError)."""
        from model.backbones import backbone_names  # local: keep config importable without torchvision

        method_weights(self.method)
        self.weights.validated()
        check_bits(self.bits)
        if self.backbone != "auto" and self.backbone not in backbone_names():
            raise ConfigError(
                f"unknown backbone {self.backbone!r}; choose auto or one of {', '.join(backbone_names())}"
            )
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.backbone_lr_mult < 0:
            raise ConfigError(f"backbone_lr_mult must be >= 0, got {self.backbone_lr_mult}")
        if self.hash_hidden < 0:
            raise ConfigError(f"hash_hidden must be >= 0, got {self.hash_hidden}")
        if self.loader_workers < -1:
            raise ConfigError(f"loader_workers must be -1 (auto) or >= 0, got {self.loader_workers}")
        for name in ("batch_size", "log_every", "feature_views", "memory_budget_mb"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("iterations", "checkpoint_every"):  # None: derived once the mode is resolved
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be at least 2 (the pairwise loss needs pairs)")
        low, high = self.augment_scale
        if not 0.0 < low <= high:
            raise ConfigError(f"augment_scale must be (low, high) with 0 < low <= high, got {self.augment_scale}")
        if not 0.0 <= self.hash_dropout < 1.0:
            raise ConfigError(f"hash_dropout must be in [0, 1), got {self.hash_dropout}")
        for name in ("feature_grey", "feature_drawing"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.target_class_mix is not None:
            self._check_class_mix(self.target_class_mix)
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        return self

    def _check_class_mix(self, mix: object) -> None:
        if not isinstance(mix, dict) or not mix:
            raise ConfigError(f"target_class_mix must map class names to shares, got {mix!r}")
        for name, share in mix.items():
            if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share < math.inf:
                raise ConfigError(f"target_class_mix[{name!r}] must be a finite number >= 0, got {share!r}")
        if sum(mix.values()) <= 0:
            raise ConfigError("target_class_mix must give at least one class a share above 0")
        if self.weights.estimated_mix:
            raise ConfigError("target_class_mix and loss_weights.estimated_mix both set the diversity term's aim")
        if self.weights.diversity <= 0:
            raise ConfigError(
                "target_class_mix is the diversity term's aim: it needs loss_weights.diversity > 0 (metah's)"
            )

    def class_mix(self, classes: Sequence[str]) -> list[float] | None:
        """``target_class_mix`` as shares in ``classes``' order, summing to 1 (None when unset); ConfigError unless
        it names exactly those classes."""
        if self.target_class_mix is None:
            return None
        self._check_class_mix(self.target_class_mix)
        missing = [name for name in classes if name not in self.target_class_mix]
        unknown = sorted(set(self.target_class_mix) - set(classes))
        if missing or unknown:
            raise ConfigError(
                "target_class_mix must name every source class and no other: "
                f"missing {', '.join(missing) or 'none'}; not a source class: {', '.join(map(str, unknown)) or 'none'}"
            )
        total = sum(self.target_class_mix.values())
        return [self.target_class_mix[name] / total for name in classes]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["loss_weights"] = self.weights.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown configuration key(s): {', '.join(unknown)}")
        values = dict(data)
        if isinstance(values.get("loss_weights"), dict):
            try:
                values["loss_weights"] = LossWeights(**values["loss_weights"])
            except TypeError as exc:
                raise ConfigError(f"invalid loss_weights: {exc}") from exc
        scale = values.get("augment_scale")
        if isinstance(scale, list | tuple):
            if len(scale) != 2 or not all(isinstance(v, int | float) for v in scale):
                raise ConfigError(f"augment_scale must be two numbers, got {scale!r}")
            values["augment_scale"] = (float(scale[0]), float(scale[1]))
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"invalid configuration: {exc}") from exc

    def override(self, **changes: Any) -> TrainConfig:
        """A copy with every non-None keyword applied."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def load_config_file(path: Path) -> TrainConfig:
    """Read a ``.json`` or ``.toml`` file with any subset of :class:`TrainConfig`'s fields."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold an object of settings")
    return TrainConfig.from_dict(data)
