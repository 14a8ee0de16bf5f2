"""MeTAH's loss terms as small pure functions. Each returns a scalar tensor (mean over its terms).

Shapes: ``codes`` are relaxed hash codes ``[N, bits]`` in ``[-1, 1]``; ``labels`` int64 ``[N]``;
``logits`` ``[N, C]`` (classifier) or ``[N]`` (discriminator).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pairwise_t_loss(codes: torch.Tensor, labels: torch.Tensor, balanced: bool = False) -> torch.Tensor:
    """TAH's pairwise t-distribution cross-entropy over all ordered pairs ``i != j`` of a labelled batch.

    ``z_ij = (bits / 2) / (1 + ||h_i - h_j||²)`` is the logit of "i and j are similar", so the loss of a
    pair is ``softplus(z_ij) - s_ij * z_ij`` with ``s_ij = 1`` for equal labels, else 0, computed as the
    equal ``softplus(-z_ij) + (1 - s_ij) * z_ij``, which does not cancel in float32 when ``z`` is large.

    With ``balanced``, similar and dissimilar pairs weigh half each, whatever their counts (TAH's weighted
    likelihood; with 10 classes only about 10 % of pairs are similar, and unweighted they barely pull).
    """
    n, bits = codes.shape
    if n < 2:
        return codes.sum() * 0.0
    squared = torch.cdist(codes, codes).pow(2)
    z = (bits / 2.0) / (1.0 + squared)
    similar = (labels[:, None] == labels[None, :]).to(codes.dtype)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=codes.device)
    losses = (F.softplus(-z) + (1.0 - similar) * z)[off_diagonal]
    if not balanced:
        return losses.mean()
    is_similar = similar[off_diagonal].bool()
    parts = [losses[mask].mean() for mask in (is_similar, ~is_similar) if mask.any()]
    return torch.stack(parts).mean()


def quantization_loss(codes: torch.Tensor) -> torch.Tensor:
    """``log cosh(|h| - 1)``: zero exactly when every relaxed bit sits at -1 or +1."""
    x = codes.abs() - 1.0
    # log cosh(x) = |x| + softplus(-2|x|) - log 2, stable for any x
    return (x.abs() + F.softplus(-2.0 * x.abs()) - math.log(2.0)).mean()


def adversarial_loss(
    domain_logits: torch.Tensor, is_source: torch.Tensor, row_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy of the discriminator, source = 1, target = 0 (the GRL makes it adversarial).

    With ``row_weights`` (``[N]``, ``>= 0``, no gradient), each row's loss weighs its share of its domain's weight,
    so the two domains still weigh the same: the classifier's certainty (:func:`certainty_weights`; CDAN+E, Long et
    al., NeurIPS 2018) lets the rows the classifier is sure of lead the alignment; the target's estimated share of
    a source row's class over the source's (importance-weighted alignment, Tachet des Combes et al., NeurIPS 2020)
    aligns the target with a source of the target's class mix.
    """
    target = is_source.to(domain_logits.dtype)
    if row_weights is None:
        return F.binary_cross_entropy_with_logits(domain_logits, target)
    weight = row_weights.detach()
    per_row = F.binary_cross_entropy_with_logits(domain_logits, target, reduction="none")
    domains = [rows for rows in (target > 0.5, target <= 0.5) if rows.any()]
    return torch.stack([(weight[rows] * per_row[rows]).sum() / weight[rows].sum() for rows in domains]).mean()


def classification_loss(class_logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of the semantic-preservation classifier on labelled source codes; ``smoothing`` spreads that
    share of each label over all classes (label smoothing), which keeps the classifier from the over-confidence that
    the target's entropy term would otherwise inherit (SHOT, Liang et al. ICML 2020)."""
    return F.cross_entropy(class_logits, labels, label_smoothing=smoothing)


def min_entropy_loss(class_logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy (nats) of the classifier's softmax on unlabelled target codes.

    Minimising it pushes each target code towards one class region of the code space.
    """
    return row_entropy(class_logits).mean()


def row_entropy(class_logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row's softmax: ``[N, C]`` → ``[N]``."""
    log_p = F.log_softmax(class_logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def certainty_weights(class_logits: torch.Tensor) -> torch.Tensor:
    """``1 + exp(-entropy)`` of each row's softmax, in ``[1 + 1/C, 2]``: how much a row counts when the sure rows
    should count more (CDAN+E's adversary, minimum class confusion). ``[N, C]`` → ``[N]``."""
    return 1.0 + torch.exp(-row_entropy(class_logits))


def diversity_loss(class_logits: torch.Tensor, mix: torch.Tensor | None = None) -> torch.Tensor:
    """Negative entropy of the batch's *mean* class distribution; minimising it spreads the predictions over the
    classes, the counterweight to :func:`min_entropy_loss` that keeps target codes from collapsing onto a few
    classes (the "diversity" half of information maximisation, SHOT, Liang et al. ICML 2020). With ``mix`` (the
    target's class shares, given or estimated, ``[C]``) it is the mean's KL divergence from ``mix`` minus ``log C``: the
    same value and gradient as without it when ``mix`` is uniform, and a pull toward ``mix`` instead of toward
    equal shares when the target's classes are not balanced.

    Shape:
        class_logits ``[N, C]`` → scalar, ``≥ -log C`` (``[-log C, 0]`` without ``mix``).
    """
    mean = F.softmax(class_logits, dim=1).mean(dim=0)
    negative_entropy = (mean * torch.log(mean.clamp_min(1e-12))).sum()
    if mix is None:
        return negative_entropy
    classes = class_logits.shape[1]
    return negative_entropy - (mean * torch.log(mix.to(mean).clamp_min(1e-12) * classes)).sum()


def class_confusion_loss(class_logits: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
    """Minimum class confusion (MCC, Jin et al. ECCV 2020) of the classifier on unlabelled target codes: how much
    the batch's predictions mix pairs of classes, the certain rows weighing more (weights ``1 + exp(-entropy)``),
    each class's column normalised; zero when every row is sure of one class.

    Shape:
        class_logits ``[N, C]`` → scalar in ``[0, (C - 1) / C]``.
    """
    n, classes = class_logits.shape
    p = F.softmax(class_logits / temperature, dim=1)
    weight = certainty_weights(class_logits / temperature)
    weight = (n * weight / weight.sum()).unsqueeze(1)
    confusion = (p * weight).t() @ p  # [C, C]
    confusion = confusion / confusion.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return (confusion.sum() - confusion.trace()) / classes
