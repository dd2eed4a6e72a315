"""BiTAT's dependency transform: input statistics, reduction matrix P, PCA init of s and V,
block expansion (Eq. 11), PadCol stacking (Eq. 12) and the Eq. 13 penalty.

The statistics side (patches, k-means, PCA) is numpy and runs once per layer;
the penalty side is ``keras.ops`` and runs in every training step on any backend.
"""

import numpy as np
from keras import ops

from bitat_keras.method.kmeans import kmeans
from bitat_keras.nn.layers import same_paddings

TRANSFORMS = ("aggregated", "cross", "intra", "filter", "none")


def im2col(x, kernel_size, strides=(1, 1), padding="same", pad_value=0.0, max_rows=None, seed=0):
    """Patches of an NHWC batch as rows of length kh*kw*cin (appendix 7.2, Eq. 14).

    Row layout matches a Keras kernel of shape (kh, kw, cin, cout) reshaped to
    (kh*kw*cin, cout), so ``im2col(x) @ kernel.reshape(-1, cout)`` is the convolution.
    SAME padding uses TF's split (see ``same_paddings``) and ``pad_value``. With
    ``max_rows``, a uniform sample (drawn from ``seed``, kept in order) of at most that
    many rows, built without building the others (all rows of a large layer would take
    N * OH * OW * kh * kw * cin floats).
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"im2col expects an NHWC batch. Received shape {x.shape}")
    kh, kw = kernel_size
    sh, sw = strides
    if padding == "same":
        ph = same_paddings(x.shape[1], kh, sh)
        pw = same_paddings(x.shape[2], kw, sw)
        x = np.pad(x, [(0, 0), ph, pw, (0, 0)], constant_values=pad_value)
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
    windows = windows[:, ::sh, ::sw]  # (N, OH, OW, C, kh, kw), a view
    count = int(np.prod(windows.shape[:3]))
    if max_rows is not None and count > max_rows:
        keep = np.random.default_rng(seed).choice(count, size=max_rows, replace=False)
        windows = windows[np.unravel_index(np.sort(keep), windows.shape[:3])]  # (R, C, kh, kw)
    windows = np.moveaxis(windows, -3, -1)  # (..., kh, kw, C)
    return windows.reshape(-1, kh * kw * x.shape[-1])


def second_moment(x):
    """(1/N) sum_i o_i o_i^T of the rows of ``x`` (the input covariance of Eq. 10)."""
    x = np.asarray(x, dtype=np.float64)
    return x.T @ x / max(len(x), 1)


def input_dims(layer):
    """d = kh * kw * cin: the input dimensions of a conv layer's im2col rows (Eq. 5)."""
    return int(np.prod(layer.kernel.shape[:3]))


def slot_size(d, groups, aggregated=True):
    """k, a layer's share of its block's s and V: its number of groups, at most ``groups``
    when the transform aggregates (Sec. 4.2), else d (P = I, Sec. 4.1)."""
    return min(int(d), int(groups)) if aggregated else int(d)


def group_ids(x, groups, method="kmeans", *, kernel_shape=None, seed=0, max_iter=100):
    """Assign each of the d input dimensions (columns of ``x``) to one of at most k groups.

    Alg. 1 line 8: if d <= k (``groups``) every dimension is its own group (P = I).
    ``"kmeans"`` clusters the dimensions' activation vectors p_j in R^N (Sec. 4.2);
    ``"filter"`` (the ablation) groups the kh*kw entries of each input channel's filter
    together, merging neighbouring channels when there are more channels than k.

    Returns:
        (ids, k): int array of shape (d,) with values in [0, k), and the number of groups.
    """
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"`groups` must be >= 1. Received: groups={groups}")
    d = x.shape[1]
    if slot_size(d, groups) == d:
        return np.arange(d), d
    if method == "kmeans":
        points = np.asarray(x, dtype=np.float32).T  # one point per input dimension
        ids = kmeans(points, groups, seed=seed, max_iter=max_iter)
    elif method == "filter":
        if kernel_shape is None:
            raise ValueError("The 'filter' grouping needs `kernel_shape` (kh, kw, cin).")
        cin = kernel_shape[2]
        channel = np.arange(d) % cin  # row (i*kw + j)*cin + c belongs to channel c
        ids = channel if cin <= groups else channel * groups // cin
    else:
        raise ValueError(f"Unknown grouping {method!r}. Expected 'kmeans' or 'filter'.")
    # Drop empty groups so every row of P has members.
    _, ids = np.unique(ids, return_inverse=True)
    return ids.astype(np.int32), int(ids.max()) + 1


def pca_init(cov, eps=1e-6):
    """Eq. 10: s = sqrt(eigenvalues), V = eigenvectors, sorted by decreasing eigenvalue.

    Eigenvalues are floored at ``eps * max_eigenvalue`` so log(s) in Reg(s, V) is finite.
    """
    evals, evecs = np.linalg.eigh(np.asarray(cov, dtype=np.float64))
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    floor = eps * max(float(evals[0]), 1e-12)
    return np.sqrt(np.maximum(evals, floor)), evecs


def grouped_pca(rows, ids, k):
    """Eq. 10 on grouped inputs (Alg. 1 lines 9-10): s and V from the PCA of the second
    moment of P o over the rows o of ``rows`` (N, d); ``ids`` None (or k = d): P = I."""
    rows = np.asarray(rows, dtype=np.float64)
    if ids is not None and k < rows.shape[1]:
        rows = group_means(rows.T, ids, k).T
    return pca_init(second_moment(rows))


def expand_block(s, v, offset, slot, s_new, v_new):
    """Eq. 11 / Alg. 1 line 10, in a block whose members own fixed slots: s <- [s; s_new],
    V <- [[V, 0], [0, V_new]] for the member whose slot is ``[offset, offset + slot)``.

    Returns new float64 arrays: the slot's first ``len(s_new)`` entries of s and its
    diagonal block of V hold the new values, the rest of the slot (a k smaller than the
    slot) and the slot's off-diagonal blocks are zero; every other entry is kept.
    """
    s, v = np.array(s, dtype=float), np.array(v, dtype=float)
    k, end = len(s_new), offset + slot
    s[offset:end] = 0.0
    v[offset:end, :] = 0.0
    v[:, offset:end] = 0.0
    s[offset : offset + k] = s_new
    v[offset : offset + k, offset : offset + k] = v_new
    return s, v


def pad_col_stack(mats):
    """Eq. 12: stack the layers' (d_j x c_j) matrices vertically, zero-padding columns on the
    right to the widest one (PadCol), so row i of every layer lines up on column j."""
    width = max(int(m.shape[1]) for m in mats)
    padded = [ops.pad(m, [(0, 0), (0, width - int(m.shape[1]))]) for m in mats]
    return ops.concatenate(padded, axis=0)


def dependency_penalty(s, v, residuals):
    """||diag(s) V^T R||_F^2 for the stacked, reduced residual R = [P_j (W_j - Q(W_j))]_j.

    The lam factor of Eq. 13 is applied by the caller (``DependencyPenalty``).
    """
    r = pad_col_stack(residuals)
    t = ops.matmul(ops.transpose(v), r) * ops.expand_dims(s, 1)
    return ops.sum(ops.square(t))


def orthogonality_and_scale(s, v, sigma, mask=None):
    """Reg(s, V) = ||V V^T - I||_F^2 + (sigma - sum_i log s_i)^2 (Sec. 4, after Eq. 9).

    ``mask`` (K,) restricts Reg to the slots in use (1) of a block whose later layers have
    not joined yet (0): V's rows and columns and s's entries outside it do not count.
    """
    k = v.shape[0]
    eye = ops.eye(k, dtype=v.dtype)
    if mask is not None:
        v = v * ops.expand_dims(mask, 1) * ops.expand_dims(mask, 0)
        eye = eye * ops.expand_dims(mask, 0)
    gram = ops.matmul(v, ops.transpose(v)) - eye
    log_s = ops.log(ops.maximum(ops.abs(s), 1e-12))
    if mask is not None:
        log_s = log_s * mask
    return ops.sum(ops.square(gram)) + ops.square(sigma - ops.sum(log_s))


def group_sizes(ids, k):
    """|group i| for i < k (at least 1, float32): the divisors of ``group_means``."""
    return np.maximum(np.bincount(np.asarray(ids), minlength=k)[:k], 1).astype("float32")


def group_means(x, ids, k, counts=None):
    """P x (Sec. 4.2) for a (d, ...) array: row i of the result is the mean of the rows of
    ``x`` in group i, i.e. P[i, j] = 1/|group i| for each dimension j in group i (never a
    dense k x d matmul). A numpy ``x`` gives numpy (its dtype kept: the statistics side),
    a tensor gives a tensor (``keras.ops``: the penalty's side). ``ids`` None means P = I.

    ``counts`` (k,): the group sizes (at least 1), e.g. a variable when ``ids`` is one;
    ``group_sizes(ids, k)`` when None.
    """
    if ids is None:
        return x
    if isinstance(x, np.ndarray):
        sums = np.zeros((k, *x.shape[1:]), dtype=x.dtype)
        np.add.at(sums, np.asarray(ids), x)
        counts = group_sizes(ids, k) if counts is None else np.asarray(counts)
        return sums / counts.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    sums = ops.segment_sum(x, ids, num_segments=k)
    counts = ops.cast(group_sizes(ids, k) if counts is None else counts, sums.dtype)
    return sums / ops.reshape(counts, (-1,) + (1,) * (len(sums.shape) - 1))
