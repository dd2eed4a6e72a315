"""k-means of a layer's input dimensions (Sec. 4.2, Alg. 1 line 8), in numpy.

Each of the d input dimensions is a point p_j in R^N (its values over N sampled im2col
rows); the k groups are the rows of the aggregation P. Seeding is greedy k-means++
(Arthur & Vassilvitskii, 2007): each new centre is the best of ``2 + ln k`` candidates drawn
with probability proportional to the squared distance to the nearest centre so far. Then
Lloyd's iterations until no assignment changes. Every distance comes from one matrix
product, ``|p|^2 - 2 p.c + |c|^2``, so a layer's clustering costs a few products of
(d x N) by (N x k) float32 matrices.
"""

import numpy as np


def squared_distances(points, point_norms, centres):
    """(n, m) squared Euclidean distances from the rows of ``points`` (with their squared
    norms ``point_norms``) to the rows of ``centres``; rounding below 0 is clipped."""
    centre_norms = np.einsum("ij,ij->i", centres, centres)
    out = point_norms[:, None] - 2.0 * (points @ centres.T) + centre_norms[None, :]
    return np.maximum(out, 0.0)


def kmeans_plus_plus(points, k, rng, point_norms):
    """Indices of ``k`` seed points of ``points`` (n, D, squared norms ``point_norms``),
    greedy k-means++."""
    n = len(points)
    trials = 2 + int(np.log(k))
    chosen = [int(rng.integers(n))]
    closest = squared_distances(points, point_norms, points[chosen])[:, 0]
    for _ in range(1, k):
        total = float(closest.sum())
        if total > 0.0:
            draws = rng.random(trials) * total
            candidates = np.minimum(np.searchsorted(np.cumsum(closest), draws), n - 1)
        else:  # every point sits on a centre already
            candidates = rng.integers(n, size=trials)
        after = np.minimum(
            closest[:, None], squared_distances(points, point_norms, points[candidates])
        )
        best = int(np.argmin(after.sum(axis=0)))
        chosen.append(int(candidates[best]))
        closest = after[:, best]
    return np.asarray(chosen)


def kmeans(points, k, *, seed=0, max_iter=100):
    """Cluster the rows of ``points`` (n, D) into at most ``k`` groups.

    Args:
        points: one point per row.
        k: the number of centres (at most n).
        seed: seeds the k-means++ draws.
        max_iter: the most Lloyd iterations.

    Returns:
        int array (n,): each row's centre in [0, k). A centre that loses all its points
        keeps its position; its id is then unused.

    Example:
        >>> ids = kmeans(np.random.default_rng(0).normal(size=(50, 8)), 4)
        >>> ids.shape, int(ids.max()) < 4
        ((50,), True)
    """
    points = np.asarray(points, dtype=np.float32)
    n = len(points)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= {n} points. Received k={k}")
    rng = np.random.default_rng(seed)
    norms = np.einsum("ij,ij->i", points, points)
    centres = points[kmeans_plus_plus(points, k, rng, norms)]
    labels = None
    for _ in range(max(int(max_iter), 1)):
        new = np.argmin(squared_distances(points, norms, centres), axis=1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        counts = np.bincount(labels, minlength=k)
        members = np.zeros((k, n), dtype=np.float32)
        members[labels, np.arange(n)] = 1.0
        sums = members @ points
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return labels
