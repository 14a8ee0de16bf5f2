from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from model.config import MODE_SCHEDULES, Schedule, TrainConfig, load_config_file
from model.errors import ConfigError
from model.losses import pairwise_t_loss
from model.network import NetOutput
from model.objective import METHODS, LossWeights, compute_objective


def test_methods_are_configurations_of_one_objective() -> None:
    assert METHODS["source_only"] == LossWeights(pairwise=10.0, quantization=0.8)
    assert METHODS["tah"] == LossWeights(pairwise=10.0, quantization=0.8, adversarial=1.0)
    assert METHODS["metah"] == LossWeights(adversarial=1.0, classification=1.0, entropy=0.3, diversity=0.1)
    assert not METHODS["source_only"].uses_target
    assert METHODS["tah"].needs_discriminator and not METHODS["tah"].needs_classifier
    assert METHODS["metah"].needs_discriminator and METHODS["metah"].needs_classifier


def _output(n_source: int, n_target: int, classes: int = 3) -> NetOutput:
    gen = torch.Generator().manual_seed(0)
    n = n_source + n_target
    return NetOutput(
        torch.rand(n, 16, generator=gen) * 2 - 1,
        torch.randn(n, classes, generator=gen),
        torch.randn(n, generator=gen),
    )


def test_objective_terms_follow_the_method() -> None:
    out, labels = _output(4, 4), torch.tensor([0, 1, 2, 0])
    _, source_only = compute_objective(out, labels, METHODS["source_only"], ramp=1.0)
    _, tah = compute_objective(out, labels, METHODS["tah"], ramp=1.0)
    _, metah = compute_objective(out, labels, METHODS["metah"], ramp=1.0)
    assert set(source_only) == {"pairwise", "quantization", "loss"}
    assert set(tah) == {"pairwise", "quantization", "adversarial", "loss"}
    assert set(metah) == {"pairwise", "quantization", "adversarial", "classification", "entropy", "diversity", "loss"}
    weights = LossWeights(
        pairwise=2.0, quantization=0.1, adversarial=0.5, classification=1.5, entropy=0.3, diversity=0.2
    )
    _, values = compute_objective(out, labels, weights, ramp=1.0)
    expected = (
        2.0 * values["pairwise"]
        + 0.1 * values["quantization"]
        + 0.5 * values["adversarial"]
        + 1.5 * values["classification"]
        + 0.3 * values["entropy"]
        + 0.2 * values["diversity"]
    )
    assert values["loss"] == pytest.approx(expected, rel=1e-5)


def test_entropy_and_diversity_weights_are_ramped_by_the_grl_coefficient() -> None:
    out, labels = _output(4, 4), torch.tensor([0, 1, 2, 0])
    ramped = LossWeights(adversarial=1.0, classification=1.0, entropy=0.3, diversity=0.1)
    _, at_start = compute_objective(out, labels, ramped, ramp=0.0)
    _, halfway = compute_objective(out, labels, ramped, ramp=0.5)
    target_terms = 0.15 * halfway["entropy"] + 0.05 * halfway["diversity"]
    assert halfway["loss"] - at_start["loss"] == pytest.approx(target_terms, rel=1e-4)
    unramped = replace(ramped, entropy_ramp=False)
    _, fixed = compute_objective(out, labels, unramped, ramp=0.0)
    assert fixed["loss"] - at_start["loss"] == pytest.approx(
        0.3 * fixed["entropy"] + 0.1 * fixed["diversity"], rel=1e-4
    )


def test_objective_refuses_a_network_without_the_needed_head() -> None:
    out = _output(2, 2)._replace(domain_logits=None)
    with pytest.raises(ConfigError, match="discriminator"):
        compute_objective(out, torch.tensor([0, 1]), METHODS["tah"], ramp=1.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bits": 12}, "multiple of 8"),
        ({"bits": 256}, "multiple of 8"),
        ({"method": "dann"}, "unknown method"),
        ({"backbone": "vgg"}, "unknown backbone"),
        ({"iterations": 0}, "iterations"),
        ({"batch_size": 1}, "batch_size"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
        ({"loss_weights": LossWeights(entropy=-1.0)}, "loss_weights.entropy must be a finite number >= 0"),
        ({"loss_weights": LossWeights(adversarial=float("nan"))}, "loss_weights.adversarial"),
        ({"loss_weights": LossWeights(pairwise=float("inf"))}, "loss_weights.pairwise"),
        ({"loss_weights": LossWeights(label_smoothing=1.0)}, "label_smoothing must be below 1"),
        ({"loss_weights": LossWeights(pseudo_threshold=0.0)}, "pseudo_threshold"),
        ({"loss_weights": LossWeights(entropy="lots")}, "loss_weights.entropy"),  # type: ignore[arg-type]
        ({"loss_weights": LossWeights(conditional_adversary=1)}, "true or false"),  # type: ignore[arg-type]
        ({"checkpoint_every": -5}, "checkpoint_every"),
        ({"device": "tpu"}, "device"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"ema_decay": -0.5}, "ema_decay"),
        ({"feature_grey": 1.5}, "feature_grey"),
        ({"feature_grey": -0.1}, "feature_grey"),
        ({"hash_dropout": 1.0}, "hash_dropout"),
        ({"augment_scale": (1.2, 0.8)}, "augment_scale"),
        ({"augment_scale": (0.0, 1.0)}, "augment_scale"),
        ({"target_class_mix": {}}, "target_class_mix must map class names"),
        ({"target_class_mix": [0.5, 0.5]}, "target_class_mix must map class names"),
        ({"target_class_mix": {"dog": -1.0, "cat": 2.0}}, r"target_class_mix\['dog'\] must be a finite number"),
        ({"target_class_mix": {"dog": float("nan")}}, r"target_class_mix\['dog'\] must be a finite number"),
        ({"target_class_mix": {"dog": float("inf")}}, r"target_class_mix\['dog'\] must be a finite number"),
        ({"target_class_mix": {"dog": "most"}}, r"target_class_mix\['dog'\] must be a finite number"),
        ({"target_class_mix": {"dog": True}}, r"target_class_mix\['dog'\] must be a finite number"),
        ({"target_class_mix": {"dog": 0, "cat": 0.0}}, "at least one class a share above 0"),
        ({"target_class_mix": {"dog": 1.0}, "method": "tah"}, r"needs loss_weights\.diversity > 0"),
        (
            {"target_class_mix": {"dog": 1.0}, "loss_weights": LossWeights(diversity=1.0, estimated_mix=True)},
            "both set the diversity term's aim",
        ),
    ],
)
def test_invalid_settings_are_config_errors(change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig().override(**change).validated()


def test_a_target_class_mix_is_read_in_the_source_s_class_order_and_must_name_each_class() -> None:
    config = TrainConfig(target_class_mix={"house": 1, "dog": 2.0, "cat": 1.0}).validated()
    assert config.class_mix(["cat", "dog", "house"]) == [0.25, 0.5, 0.25]
    assert TrainConfig().class_mix(["cat", "dog"]) is None
    with pytest.raises(ConfigError, match="missing cat; not a source class: none"):
        TrainConfig(target_class_mix={"dog": 1.0}).class_mix(["cat", "dog"])
    with pytest.raises(ConfigError, match="missing none; not a source class: bird"):
        TrainConfig(target_class_mix={"dog": 1.0, "cat": 1.0, "bird": 1.0}).class_mix(["cat", "dog"])


def test_config_files_json_and_toml(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"bits": 32, "loss_weights": {"entropy": 0.2}}))
    (tmp_path / "b.toml").write_text('method = "tah"\niterations = 10\n')
    (tmp_path / "c.json").write_text('{"bitz": 32}')
    (tmp_path / "d.json").write_text("{not json")
    (tmp_path / "e.json").write_text(json.dumps({"augment_scale": [0.8, 1.25]}))
    (tmp_path / "f.json").write_text(json.dumps({"augment_scale": [0.8, "big"]}))
    (tmp_path / "g.json").write_text(json.dumps({"loss_weights": {"entropy": "lots"}}))
    (tmp_path / "h.toml").write_text("[target_class_mix]\ndog = 3\nhouse = 0.5\n")
    assert load_config_file(tmp_path / "a.json").weights.entropy == 0.2
    assert load_config_file(tmp_path / "b.toml").method == "tah"
    assert load_config_file(tmp_path / "e.json").augment_scale == (0.8, 1.25)
    assert load_config_file(tmp_path / "h.toml").validated().target_class_mix == {"dog": 3, "house": 0.5}
    with pytest.raises(ConfigError, match="augment_scale must be two numbers"):
        load_config_file(tmp_path / "f.json")
    with pytest.raises(ConfigError, match=r"loss_weights\.entropy must be a finite number"):
        load_config_file(tmp_path / "g.json").validated()
    with pytest.raises(ConfigError, match="unknown configuration key"):
        load_config_file(tmp_path / "c.json")
    with pytest.raises(ConfigError, match="not valid"):
        load_config_file(tmp_path / "d.json")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(tmp_path / "missing.json")


def test_default_config_is_the_documented_recipe() -> None:
    config = TrainConfig().validated()
    assert (config.method, config.bits, config.backbone, config.mode, config.iterations, config.batch_size) == (
        "metah",
        64,
        "auto",
        "auto",
        None,  # the mode's: model.config.MODE_SCHEDULES
        64,
    )
    assert (config.lr, MODE_SCHEDULES["finetune"], MODE_SCHEDULES["frozen"]) == (
        None,
        Schedule(1200, 1e-3),
        Schedule(3600, 3e-3),
    )
    assert config.backbone_lr_mult == 0.1
    assert config.augment and config.ema_decay == 0.995
    assert config.to_dict()["loss_weights"] == {
        "pairwise": 1.0,
        "quantization": 0.1,
        "adversarial": 1.0,
        "classification": 1.0,
        "entropy": 0.3,
        "diversity": 0.1,
        "confusion": 0.0,
        "pseudo_pairs": 0.0,
        "pseudo_threshold": 0.9,
        "cluster": 0.0,
        "conditional_adversary": False,
        "entropy_weighted_adversary": False,
        "class_weighted_adversary": False,
        "neighbours": 0.0,
        "estimated_mix": False,
        "label_smoothing": 0.0,
        "entropy_ramp": True,
        "balance_pairs": True,
    }
    assert (config.feature_views, config.feature_grey, config.feature_drawing) == (2, 0.0, 0.5)


def test_checkpoints_come_ten_times_a_run_once_its_length_is_known_unless_asked_for() -> None:
    assert TrainConfig(mode="finetune").checkpoint_interval == 120  # 1,200 steps
    assert TrainConfig(mode="frozen").checkpoint_interval == 200  # 3,600 steps: capped at 200
    assert TrainConfig(mode="frozen", iterations=30).checkpoint_interval == 3
    assert TrainConfig(mode="frozen", iterations=5).checkpoint_interval == 1
    assert TrainConfig(mode="frozen", checkpoint_every=7).checkpoint_interval == 7
    with pytest.raises(ConfigError, match="unresolved mode"):
        _ = TrainConfig().checkpoint_interval  # auto: the length is not known yet


def test_the_weight_average_never_spans_more_than_a_sixth_of_a_short_run() -> None:
    for mode in ("finetune", "frozen"):  # the modes' default lengths (1,200 and 3,600 steps): unchanged
        assert TrainConfig(mode=mode).applied_ema_decay == pytest.approx(0.995)
    assert TrainConfig(iterations=100).applied_ema_decay == pytest.approx(0.94)
    assert TrainConfig(iterations=5).applied_ema_decay == 0.0  # each update copies: the last iterate
    assert TrainConfig(iterations=100_000, ema_decay=0.9).applied_ema_decay == 0.9


def test_ema_decay_keeps_its_name_in_config_files_and_checkpoints() -> None:
    """``ema_decay`` is what config files, checkpoints and artefacts' ``config`` carry: the name stays."""
    saved = TrainConfig(ema_decay=0.9).to_dict()
    assert saved["ema_decay"] == 0.9
    assert TrainConfig.from_dict(saved).ema_decay == 0.9
    assert TrainConfig.from_dict({"ema_decay": 0, "mode": "frozen"}).applied_ema_decay == 0.0


def test_frozen_features_have_their_own_presets_and_explicit_weights_win() -> None:
    from model.objective import FROZEN_METHODS

    frozen = TrainConfig(mode="frozen")
    assert frozen.weights == FROZEN_METHODS["metah"]
    assert frozen.weights.diversity > 0 and frozen.weights.entropy > 0  # entropy never without its counterweight
    assert frozen.weights.conditional_adversary and frozen.weights.needs_classifier
    assert TrainConfig(mode="finetune").weights == METHODS["metah"]
    assert TrainConfig(mode="auto").weights == METHODS["metah"]  # before the mode is resolved
    explicit = LossWeights(pairwise=2.0)
    assert TrainConfig(mode="frozen", loss_weights=explicit).weights == explicit


def test_the_diversity_term_enters_the_objective_ramped_like_the_entropy() -> None:
    torch.manual_seed(0)
    out = NetOutput(torch.tanh(torch.randn(8, 16)), torch.randn(8, 3), None)
    labels = torch.tensor([0, 1, 2, 0])
    weights = LossWeights(classification=1.0, entropy=0.1, diversity=0.5)
    _, values = compute_objective(out, labels, weights, ramp=1.0)
    assert "diversity" in values and values["diversity"] < 0
    half, _ = compute_objective(out, labels, weights, ramp=0.5)
    full, _ = compute_objective(out, labels, weights, ramp=1.0)
    without, _ = compute_objective(out, labels, LossWeights(classification=1.0), ramp=1.0)
    ramped_part = float(full - without)
    assert float(half - without) == pytest.approx(ramped_part / 2, rel=1e-5)


def test_the_class_confusion_term_reads_the_target_rows_ramped() -> None:
    torch.manual_seed(0)
    codes = torch.tanh(torch.randn(8, 16))
    logits = torch.randn(8, 3).requires_grad_()
    out, labels = NetOutput(codes, logits, None), torch.tensor([0, 1, 2, 0])
    weights = LossWeights(classification=1.0, confusion=2.0)
    assert weights.needs_classifier and weights.uses_target and not LossWeights(classification=1.0).uses_target
    total, values = compute_objective(out, labels, weights, ramp=0.5)
    without, _ = compute_objective(out, labels, replace(weights, confusion=0.0), ramp=0.5)
    assert float((total - without).detach()) == pytest.approx(2.0 * 0.5 * values["confusion"], rel=1e-5)
    (grad,) = torch.autograd.grad(total - without, logits)
    assert grad[:4].abs().sum() == 0 and grad[4:].abs().sum() > 0  # source rows are left alone


def test_pseudo_pairs_pull_only_the_target_codes_the_classifier_is_sure_of() -> None:
    torch.manual_seed(0)
    codes = torch.tanh(torch.randn(6, 16)).requires_grad_()
    sure, unsure = torch.tensor([0.0, 9.0, 0.0]), torch.zeros(3)  # softmax ≈ 1.0 for class 1; exactly 1/3 each
    logits = torch.stack([torch.randn(3), torch.randn(3), torch.randn(3), torch.randn(3), sure, unsure])
    out, labels = NetOutput(codes, logits, None), torch.tensor([0, 1, 1, 2])
    weights = LossWeights(classification=1.0, pseudo_pairs=2.0, pseudo_threshold=0.9)
    assert weights.needs_classifier and weights.uses_target
    total, values = compute_objective(out, labels, weights, ramp=0.5)
    without, _ = compute_objective(out, labels, replace(weights, pseudo_pairs=0.0), ramp=0.5)
    assert float((total - without).detach()) == pytest.approx(2.0 * 0.5 * values["pseudo_pairs"], rel=1e-5)
    (grad,) = torch.autograd.grad(total - without, codes)
    assert grad[4].abs().sum() > 0 and grad[5].abs().sum() == 0  # the unsure row is left alone
    # the sure row joins as class 1: the same term as a source row labelled 1 there
    as_source = pairwise_t_loss(codes[:5].detach(), torch.tensor([0, 1, 1, 2, 1]), balanced=True)
    assert values["pseudo_pairs"] == pytest.approx(float(as_source), rel=1e-5)


def test_the_cluster_term_is_the_target_rows_cross_entropy_against_their_guessed_labels() -> None:
    out, labels = _output(4, 4), torch.tensor([0, 1, 2, 0])
    weights = LossWeights(classification=1.0, cluster=0.5)
    assert weights.uses_target and weights.needs_classifier
    _, before = compute_objective(out, labels, weights, ramp=1.0)  # no labels guessed yet: no term
    assert "cluster" not in before
    guess = torch.tensor([2, 2, 1, 0])
    _, values = compute_objective(out, labels, weights, ramp=0.0, target_guess=guess)  # not ramped
    assert out.class_logits is not None
    expected = torch.nn.functional.cross_entropy(out.class_logits[4:], guess)
    assert values["cluster"] == pytest.approx(float(expected), rel=1e-6)
    assert values["loss"] - before["loss"] == pytest.approx(0.5 * values["cluster"], rel=1e-5)


def test_a_conditional_adversary_needs_the_classifier_only_with_an_adversary() -> None:
    assert LossWeights(adversarial=1.0, conditional_adversary=True).needs_classifier
    assert not LossWeights(conditional_adversary=True).needs_classifier  # no adversary: nothing to condition


def test_the_neighbours_term_is_how_little_each_target_row_agrees_with_its_neighbour() -> None:
    out, labels = _output(4, 4), torch.tensor([0, 1, 2, 0])
    weights = LossWeights(classification=1.0, neighbours=2.0)
    assert weights.uses_target and weights.needs_classifier
    _, before = compute_objective(out, labels, weights, ramp=0.5)  # no neighbours drawn: no term
    assert "neighbours" not in before
    sure = torch.full((4, 3), -20.0)
    sure[:, 0] = 20.0
    _, values = compute_objective(out, labels, weights, ramp=0.5, neighbour_logits=sure)
    assert out.class_logits is not None
    p = torch.softmax(out.class_logits[4:], dim=1)
    assert values["neighbours"] == pytest.approx(float(-torch.log(p[:, 0]).mean()), rel=1e-5)
    assert values["loss"] - before["loss"] == pytest.approx(2.0 * 0.5 * values["neighbours"], rel=1e-5)  # ramped
    agreeing = NetOutput(out.codes, torch.cat([out.class_logits[:4], sure]), out.domain_logits)
    _, agreed = compute_objective(agreeing, labels, weights, ramp=0.5, neighbour_logits=sure)
    assert agreed["neighbours"] == pytest.approx(0.0, abs=1e-6)  # both sure of one class


def test_the_diversity_term_aims_at_a_class_mix_once_there_is_one() -> None:
    out, labels = _output(4, 4), torch.tensor([0, 1, 2, 0])
    mix = torch.tensor([0.8, 0.15, 0.05])
    weights = LossWeights(classification=1.0, diversity=1.0)
    _, uniform = compute_objective(out, labels, weights, ramp=1.0)  # none given or estimated yet: equal shares
    _, equal = compute_objective(out, labels, weights, ramp=1.0, target_mix=torch.full((3,), 1 / 3))
    assert equal["diversity"] == pytest.approx(uniform["diversity"], rel=1e-6)
    _, values = compute_objective(out, labels, weights, ramp=1.0, target_mix=mix)
    assert out.class_logits is not None
    mean = torch.softmax(out.class_logits[4:], dim=1).mean(dim=0)
    expected = float((mean * torch.log(mean / mix)).sum()) - float(torch.log(torch.tensor(3.0)))
    assert values["diversity"] == pytest.approx(expected, rel=1e-5)
