"""The unlabelled target's own structure: cluster pseudo-labels (SHOT's self-supervised labelling, Liang et al.,
ICML 2020) and each image's nearest neighbours (the ``neighbours`` term of :mod:`model.objective`).

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
