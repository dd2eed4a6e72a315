"""Analysis helpers of Sec. 7.4 / Fig. 8: Q_orig (Eq. 2), Q_ours (Eq. 6 without l1), and the
size of V full vs aggregated (Sec. 4.2)."""

import numpy as np
from keras import ops

from bitat_keras import transform
from bitat_keras.layers import BinaryConv2D
from bitat_keras.models import eligible_layers
from bitat_keras.statistics import patch_rows
from bitat_keras.trained_block import partition


def _as_matrix(w):
    w = np.asarray(w, dtype=np.float64)
    return w.reshape(-1, w.shape[-1])


def q_orig(w_fp, w_q):
    """Eq. 2's objective at the final binary weights: ||w_fp - w_q||_F^2."""
    return float(np.sum((_as_matrix(w_fp) - _as_matrix(w_q)) ** 2))


def q_ours(w_fp, w_q, s, v, ids=None):
    """Eq. 6 without the l1 term: ||diag(s) V^T P (w_fp - w_q)||_F^2 (P = I if ids is None)."""
    e = _as_matrix(w_fp) - _as_matrix(w_q)
    if ids is not None:
        e = transform.reduce_rows(e, ids, int(np.max(ids)) + 1)
    return float(np.sum((np.asarray(s)[:, None] * (np.asarray(v).T @ e)) ** 2))


def quantization_errors(fp_model, binary_model, images, *, max_rows=4096, seed=0):
    """Per-layer Q_orig and Q_ours between the pre-trained and the binary weights (Fig. 8).

    s and V of each layer come from the pre-trained model's own inputs (Eq. 10, one layer
    at a time, no cross-layer terms), as in the paper's Sec. 7.4.

    Args:
        fp_model: the pre-trained full-precision model.
        binary_model: the binarized model (same layer names).
        images: a batch of inputs for the statistics.

    Returns:
        ``{"layers": {name: {"q_orig", "q_ours", "ratio"}}, "q_orig", "q_ours", "ratio"}``.

    Example:
        >>> errs = quantization_errors(fp, result.model, x[:256])  # doctest: +SKIP
    """
    layers = {}
    for name in eligible_layers(fp_model):
        fp_layer = fp_model.get_layer(name)
        bin_layer = binary_model.get_layer(name)
        if not isinstance(bin_layer, BinaryConv2D):
            continue
        rows = patch_rows(fp_model, fp_layer, images, binarized=False, max_rows=max_rows, seed=seed)
        s, v = transform.pca_init(transform.second_moment(rows))
        w_fp = ops.convert_to_numpy(fp_layer.kernel)
        w_q = ops.convert_to_numpy(bin_layer.quantized_kernel())
        qo, qs = q_orig(w_fp, w_q), q_ours(w_fp, w_q, s, v)
        layers[name] = {"q_orig": qo, "q_ours": qs, "ratio": qs / qo if qo else float("nan")}
    total_o = sum(r["q_orig"] for r in layers.values())
    total_s = sum(r["q_ours"] for r in layers.values())
    return {
        "layers": layers,
        "q_orig": total_o,
        "q_ours": total_s,
        "ratio": total_s / total_o if total_o else float("nan"),
    }


def v_parameter_count(model, groups=256, blocks="auto"):
    """Entries of V over all blocks: full (Sec. 4.1, d x d per block) against aggregated
    (k-means groups, at most ``groups`` per layer; Sec. 4.2) before any training.

    Returns:
        ``{"full": int, "aggregated": int, "ratio": float}``.

    Example:
        >>> v_parameter_count(bk.models.reactnet_mobilenet())["ratio"]  # doctest: +SKIP
    """
    names = eligible_layers(model)
    dims = {n: int(np.prod(model.get_layer(n).kernel.shape[:3])) for n in names}
    full = agg = 0
    for block in partition({n: model.get_layer(n).kernel_size for n in names}, blocks):
        full += sum(dims[n] for n in block) ** 2
        agg += sum(min(dims[n], groups) for n in block) ** 2
    return {"full": full, "aggregated": agg, "ratio": agg / full if full else 0.0}
