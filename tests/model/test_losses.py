"""Each loss against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from model.losses import (
    adversarial_loss,
    certainty_weights,
    class_confusion_loss,
    classification_loss,
    diversity_loss,
    min_entropy_loss,
    pairwise_t_loss,
    quantization_loss,
)
from model.network import NetOutput
from model.objective import METHODS, LossWeights, compute_objective, method_weights


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_pairwise_similar_and_dissimilar_pair_by_hand() -> None:
    # bits = 2, ||h1 - h2||² = 4 → z = (2 / 2) / (1 + 4) = 0.2
    codes = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    same = pairwise_t_loss(codes, torch.tensor([3, 3]))
    different = pairwise_t_loss(codes, torch.tensor([3, 4]))
    assert same.item() == pytest.approx(softplus(0.2) - 0.2, abs=1e-6)
    assert different.item() == pytest.approx(softplus(0.2), abs=1e-6)


def test_pairwise_identical_codes_of_same_class_cost_almost_nothing() -> None:
    codes = torch.ones(3, 16)  # z = 16 / 2 = 8 for every pair
    loss = pairwise_t_loss(codes, torch.tensor([0, 0, 0]))
    assert loss.item() == pytest.approx(softplus(8.0) - 8.0, rel=1e-4)


def test_pairwise_ignores_the_diagonal_and_averages_mixed_pairs() -> None:
    codes = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]])
    labels = torch.tensor([0, 0, 1])
    # pairs (0,1),(1,0): same class, d² = 0, z = 1 → softplus(1) - 1
    # pairs (0,2),(2,0),(1,2),(2,1): different class, d² = 8, z = 1/9 → softplus(1/9)
    expected = (2 * (softplus(1.0) - 1.0) + 4 * softplus(1 / 9)) / 6
    assert pairwise_t_loss(codes, labels).item() == pytest.approx(expected, abs=1e-6)


def test_pairwise_gradient_pulls_similar_pairs_together() -> None:
    codes = torch.tensor([[0.5, 0.5], [-0.5, 0.5]], requires_grad=True)
    pairwise_t_loss(codes, torch.tensor([1, 1])).backward()
    assert codes.grad is not None
    # descending the gradient moves the first code's x towards the second's (decreasing x)
    assert codes.grad[0, 0] > 0 > codes.grad[1, 0]


def test_pairwise_single_sample_is_zero_and_differentiable() -> None:
    codes = torch.zeros(1, 8, requires_grad=True)
    loss = pairwise_t_loss(codes, torch.tensor([0]))
    loss.backward()
    assert loss.item() == 0.0


def test_quantization_is_zero_at_binary_values_and_log_cosh_1_at_zero() -> None:
    assert quantization_loss(torch.tensor([[1.0, -1.0]])).item() == pytest.approx(0.0, abs=1e-7)
    assert quantization_loss(torch.zeros(1, 4)).item() == pytest.approx(math.log(math.cosh(1.0)), abs=1e-6)
    mixed = torch.tensor([[0.5, -1.0]])
    assert quantization_loss(mixed).item() == pytest.approx(math.log(math.cosh(0.5)) / 2, abs=1e-6)


def test_adversarial_is_binary_cross_entropy_on_logits() -> None:
    logits = torch.tensor([0.0, 2.0, -1.0])
    is_source = torch.tensor([1.0, 1.0, 0.0])
    expected = (math.log(2) + softplus(-2.0) + softplus(-1.0)) / 3
    assert adversarial_loss(logits, is_source).item() == pytest.approx(expected, abs=1e-6)


def test_classification_is_cross_entropy() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(2)) / 2
    assert classification_loss(logits, torch.tensor([0, 1])).item() == pytest.approx(expected, abs=1e-6)


def test_entropy_of_uniform_and_confident_responses() -> None:
    assert min_entropy_loss(torch.zeros(2, 10)).item() == pytest.approx(math.log(10), abs=1e-6)
    assert min_entropy_loss(torch.tensor([[50.0, 0.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)


def test_entropy_gradient_makes_the_response_more_confident() -> None:
    logits = torch.tensor([[1.0, 0.5, 0.0]], requires_grad=True)
    min_entropy_loss(logits).backward()
    assert logits.grad is not None
    stepped = logits.detach() - 0.5 * logits.grad
    before = torch.softmax(logits.detach(), 1).max().item()
    after = torch.softmax(stepped, 1).max().item()
    assert after > before
    assert min_entropy_loss(stepped).item() < min_entropy_loss(logits.detach()).item()


def test_diversity_is_the_negative_entropy_of_the_mean_prediction() -> None:
    # two confident predictions on different classes: the mean is [0.5, 0.5, 0] -> -log 2
    spread = torch.tensor([[50.0, 0.0, 0.0], [0.0, 50.0, 0.0]])
    assert diversity_loss(spread).item() == pytest.approx(-math.log(2), abs=1e-6)
    # the same confident class twice: the mean is one-hot -> 0, the largest (worst) value
    collapsed = torch.tensor([[50.0, 0.0, 0.0], [50.0, 0.0, 0.0]])
    assert diversity_loss(collapsed).item() == pytest.approx(0.0, abs=1e-6)
    # uniform mean over C classes is the minimum, -log C
    assert diversity_loss(torch.zeros(4, 5)).item() == pytest.approx(-math.log(5), abs=1e-6)
    # a gradient step moves a collapsed batch towards using more classes
    logits = torch.tensor([[3.0, 0.0, 0.0], [2.0, 0.5, 0.0]], requires_grad=True)
    diversity_loss(logits).backward()
    assert logits.grad is not None
    stepped = logits.detach() - 0.5 * logits.grad
    assert diversity_loss(stepped).item() < diversity_loss(logits.detach()).item()


def test_diversity_toward_an_estimated_mix_is_smallest_at_that_mix_and_plain_when_it_is_uniform() -> None:
    logits = torch.tensor([[3.0, 0.0, 0.0], [2.0, 0.5, 0.0], [0.0, 1.0, 0.2]])
    uniform = torch.full((3,), 1 / 3)
    assert diversity_loss(logits, uniform).item() == pytest.approx(diversity_loss(logits).item(), abs=1e-6)
    mix = torch.tensor([0.7, 0.2, 0.1])
    at_mix = mix.log().expand(4, 3)  # every row predicts the mix: the mean is the mix, KL 0
    assert diversity_loss(at_mix, mix).item() == pytest.approx(-math.log(3), abs=1e-6)
    assert diversity_loss(torch.zeros(4, 3), mix).item() > -math.log(3)  # equal shares are no longer the aim
    # a gradient step moves the batch's mean class distribution toward the mix
    moving = logits.clone().requires_grad_(True)
    diversity_loss(moving, mix).backward()
    assert moving.grad is not None
    stepped = logits - 0.5 * moving.grad

    def gap(rows: torch.Tensor) -> float:
        return float((torch.softmax(rows, 1).mean(0) - mix).abs().sum())

    assert gap(stepped) < gap(logits)


# Four 2-bit codes, labels [0, 0, 1, 1]: two similar pairs (each counted in both orders), four dissimilar ones.
#   similar    (0,1): d² = 4, z = 1/5    (2,3): d² = 8, z = 1/9
#   dissimilar (0,2): d² = 8, z = 1/9    (0,3): d² = 0, z = 1    (1,2), (1,3): d² = 4, z = 1/5
BALANCE_CODES = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0], [1.0, 1.0]])
BALANCE_LABELS = torch.tensor([0, 0, 1, 1])
SIMILAR_MEAN = ((softplus(1 / 5) - 1 / 5) + (softplus(1 / 9) - 1 / 9)) / 2
DISSIMILAR_MEAN = (softplus(1 / 9) + softplus(1.0) + 2 * softplus(1 / 5)) / 4


def test_pairwise_balanced_weighs_similar_and_dissimilar_pairs_half_each() -> None:
    balanced = pairwise_t_loss(BALANCE_CODES, BALANCE_LABELS, balanced=True)
    assert balanced.item() == pytest.approx((SIMILAR_MEAN + DISSIMILAR_MEAN) / 2, abs=1e-6)
    # unbalanced, the eight dissimilar ordered pairs outweigh the four similar ones two to one
    plain = pairwise_t_loss(BALANCE_CODES, BALANCE_LABELS, balanced=False)
    assert plain.item() == pytest.approx((SIMILAR_MEAN + 2 * DISSIMILAR_MEAN) / 3, abs=1e-6)


def test_pairwise_balanced_with_one_kind_of_pair_is_that_kind_s_mean() -> None:
    codes = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])  # d² = 4, 8, 4 → z = 1/5, 1/9, 1/5
    all_similar = pairwise_t_loss(codes, torch.tensor([5, 5, 5]), balanced=True)
    assert all_similar.item() == pytest.approx((2 * (softplus(1 / 5) - 1 / 5) + softplus(1 / 9) - 1 / 9) / 3, abs=1e-6)
    all_dissimilar = pairwise_t_loss(codes, torch.tensor([0, 1, 2]), balanced=True)
    assert all_dissimilar.item() == pytest.approx((2 * softplus(1 / 5) + softplus(1 / 9)) / 3, abs=1e-6)


def test_every_method_s_objective_uses_the_balanced_pairwise_loss() -> None:
    labels = BALANCE_LABELS
    out = NetOutput(BALANCE_CODES, class_logits=torch.zeros(4, 2), domain_logits=torch.zeros(4))
    for method in METHODS:
        for mode in ("finetune", "frozen"):
            _, values = compute_objective(out, labels, method_weights(method, mode), ramp=1.0)
            assert values["pairwise"] == pytest.approx((SIMILAR_MEAN + DISSIMILAR_MEAN) / 2, abs=1e-6), method


def test_class_confusion_is_zero_for_sure_rows_and_largest_for_uniform_ones() -> None:
    sure = torch.tensor([[100.0, 0.0, 0.0], [0.0, 100.0, 0.0], [0.0, 0.0, 100.0], [100.0, 0.0, 0.0]])
    assert class_confusion_loss(sure).item() == pytest.approx(0.0, abs=1e-6)
    # uniform rows: every normalised row of the confusion matrix is 1/C each, so (C - C/C) / C = (C - 1) / C
    assert class_confusion_loss(torch.zeros(4, 5)).item() == pytest.approx(4 / 5, abs=1e-6)
    # a gradient step makes mixed rows less confused
    logits = torch.tensor([[1.0, 0.8, 0.0], [0.2, 1.0, 0.9], [0.5, 0.4, 1.0]], requires_grad=True)
    class_confusion_loss(logits).backward()
    assert logits.grad is not None
    stepped = (logits - 1.0 * logits.grad).detach()
    assert class_confusion_loss(stepped).item() < class_confusion_loss(logits.detach()).item()


def test_entropy_weighted_adversary_weighs_sure_rows_more_and_each_domain_half() -> None:
    # rows: two source (one sure, one uniform), one target; per-row BCE known by hand
    logits = torch.tensor([0.0, 2.0, -1.0])
    is_source = torch.tensor([1.0, 1.0, 0.0])
    classes = torch.tensor([[100.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    sure, unsure = 2.0, 1.0 + 0.5  # 1 + exp(-0) and 1 + exp(-log 2)
    source = (sure * math.log(2) + unsure * softplus(-2.0)) / (sure + unsure)
    expected = (source + softplus(-1.0)) / 2
    assert adversarial_loss(logits, is_source, certainty_weights(classes)).item() == pytest.approx(expected, abs=1e-5)
    # equal weights give back the plain loss for equal domain sizes, and the classifier gets no gradient from it
    even = torch.zeros(4, 3, requires_grad=True)
    two_each = torch.tensor([0.3, -0.2, 1.0, 0.5])
    plain = adversarial_loss(two_each, torch.tensor([1.0, 1.0, 0.0, 0.0]))
    weighted = adversarial_loss(two_each, torch.tensor([1.0, 1.0, 0.0, 0.0]), certainty_weights(even))
    assert weighted.item() == pytest.approx(plain.item(), abs=1e-6)
    assert not weighted.requires_grad


def test_label_smoothing_spreads_a_share_of_the_label() -> None:
    logits = torch.tensor([[2.0, 0.0]])
    log_p = torch.log_softmax(logits, dim=1)[0]
    expected = -(0.95 * log_p[0] + 0.05 * log_p[1]).item()  # 0.1 spread over 2 classes
    assert classification_loss(logits, torch.tensor([0]), 0.1).item() == pytest.approx(expected, abs=1e-6)


def test_the_entropy_weighted_adversary_needs_and_reads_the_classifier() -> None:
    weights = LossWeights(adversarial=1.0, entropy_weighted_adversary=True)
    assert weights.needs_classifier
    assert not LossWeights(entropy_weighted_adversary=True).needs_classifier  # no adversary, nothing to weigh
    # the two source rows differ in certainty (the sure one weighs more); each domain's weights are normalised
    classes = torch.tensor([[9.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    out = NetOutput(torch.zeros(4, 8), class_logits=classes, domain_logits=torch.tensor([0.3, -0.2, 1.0, 0.5]))
    labels = torch.tensor([0, 1])
    _, plain = compute_objective(out, labels, LossWeights(adversarial=1.0), ramp=1.0)
    _, weighted = compute_objective(out, labels, weights, ramp=1.0)
    assert plain["adversarial"] != pytest.approx(weighted["adversarial"], abs=1e-4)


def test_the_class_weighted_adversary_weighs_source_rows_by_their_class_once_weights_exist() -> None:
    weights = LossWeights(adversarial=1.0, class_weighted_adversary=True)
    assert weights.needs_classifier  # its class weights come from the classifier's answers on the target
    out = NetOutput(torch.zeros(4, 8), class_logits=torch.zeros(4, 2), domain_logits=torch.tensor([0.3, -0.2, 1, 0.5]))
    labels = torch.tensor([0, 1])
    _, plain = compute_objective(out, labels, LossWeights(adversarial=1.0), ramp=1.0)
    _, unweighted = compute_objective(out, labels, weights, ramp=1.0)  # no estimate yet: plain
    assert unweighted["adversarial"] == pytest.approx(plain["adversarial"], abs=1e-6)
    _, weighted = compute_objective(out, labels, weights, ramp=1.0, class_weights=torch.tensor([3.0, 1.0]))
    source = (3.0 * softplus(-0.3) + 1.0 * softplus(0.2)) / 4.0  # class 0's row weighs three times class 1's
    expected = (source + (softplus(1.0) + softplus(0.5)) / 2) / 2
    assert weighted["adversarial"] == pytest.approx(expected, abs=1e-5)
