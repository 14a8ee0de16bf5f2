"""The unlabelled target's own structure: cluster pseudo-labels (SHOT's self-supervised labelling, Liang et al.,
ICML 2020), each image's nearest neighbours (the ``neighbours`` term of :mod:`model.objective`) and the target's
class mix (the ``estimated_mix`` option of its diversity term).

The classifier's soft answers weight a centroid per class in code space; each target code takes the class of its
nearest centroid (cosine), and one more round recomputes the centroids from those hard labels. Unlike the
classifier's own argmax, a label reflects where the whole target domain's codes cluster, so a class that the
classifier systematically confuses on the target can still be recovered.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def centroid_labels(codes: torch.Tensor, class_logits: torch.Tensor, rounds: int = 2) -> torch.Tensor:
    """Nearest-centroid labels of ``codes`` ``[N, bits]`` seeded by ``class_logits`` ``[N, C]``; int64 ``[N]``.

    Round one weights each centroid by the softmax, later rounds by the previous round's hard labels. A class
    that no code chose keeps its previous centroid (it stays selectable, as it would be after the first round).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be ≥ 1, got {rounds}")
    points = F.normalize(codes.float(), dim=1)
    weights = F.softmax(class_logits.float(), dim=1)
    centroids = torch.zeros(weights.shape[1], points.shape[1], dtype=points.dtype, device=points.device)
    labels = weights.argmax(dim=1)
    for _ in range(rounds):
        mass = weights.sum(dim=0)
        present = mass > 0
        centroids[present] = (weights.T @ points)[present] / mass[present, None]
        labels = (points @ F.normalize(centroids, dim=1).T).argmax(dim=1)
        weights = F.one_hot(labels, weights.shape[1]).to(points.dtype)
    return labels


def nearest_rows(features: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Each row's ``k`` nearest other rows of ``features`` ``[N, D]`` by cosine similarity, nearest first; int64
    ``[N, k]``. Exhaustive (``N²·D`` multiply-adds, ``chunk`` rows at a time): seconds for ten thousand rows.

    Raises:
        ValueError: ``k`` not in ``[1, N - 1]``.
    """
    n = features.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be between 1 and {n - 1} (the other rows), got {k}")
    points = F.normalize(features.float(), dim=1)
    found = []
    for start in range(0, n, chunk):
        similarity = points[start : start + chunk] @ points.T
        rows = torch.arange(similarity.shape[0])
        similarity[rows, rows + start] = -torch.inf  # not its own neighbour
        found.append(similarity.topk(k, dim=1).indices)
    return torch.cat(found)


def estimate_class_mix(
    probabilities: torch.Tensor, source_share: torch.Tensor, iterations: int = 100, floor: float = 1e-3
) -> torch.Tensor:
    """The target's class shares ``[C]`` by expectation–maximisation over a classifier's target probabilities
    ``[N, C]`` that were learned under the source's shares ``source_share`` ``[C]`` (Saerens, Latinne and
    Decaestecker, Neural Computation 2002): each row's probabilities are re-weighted by the current estimate over
    the source's share and renormalised; their mean is the next estimate. Starts from the source's shares. Every
    estimate is mixed with ``floor`` of each class (``floor + (1 − C·floor) · mean``), so no class is ever ruled out.

    Raises:
        ValueError: shapes that disagree, no rows, or a ``floor`` outside ``[0, 1 / C)``.
    """
    if probabilities.dim() != 2 or probabilities.shape[0] == 0 or source_share.shape != probabilities.shape[1:]:
        raise ValueError(
            f"need probabilities [N>0, C] and source shares [C], got {tuple(probabilities.shape)} and "
            f"{tuple(source_share.shape)}"
        )
    classes = probabilities.shape[1]
    if not 0 <= floor < 1 / classes:
        raise ValueError(f"floor must be in [0, 1/{classes}), got {floor}")
    prior = source_share.float().clamp_min(1e-12)
    prior = prior / prior.sum()
    mix = prior
    for _ in range(iterations):
        adjusted = probabilities.float() * (mix / prior)
        adjusted = adjusted / adjusted.sum(dim=1, keepdim=True).clamp_min(1e-12)
        mix = floor + (1 - classes * floor) * adjusted.mean(dim=0)
    return mix
