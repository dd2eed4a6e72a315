"""Analysis helpers of Sec. 7.4 / Fig. 8: Q_orig (Eq. 2), Q_ours (Eq. 6 without l1), and the
size of V full vs aggregated (Sec. 4.2).

Q_orig and Q_ours take the binary kernel as the layer uses it, alpha[o] * sign(w) with
alpha[o] = mean|w[:, o]| of the *latent* weights, so they also grow or shrink with the latent
weights' magnitude, which the network's function ignores when a BatchNorm follows the
convolution. ``fit_scale=True`` measures only the signs: each output channel's scale is the
least-squares one for that error (Eq. 6 minimises over every scaled binary kernel), and
``signs_kept`` is the fraction of the pre-trained weights whose sign survived.
"""

import numpy as np
from keras import ops

from bitat_keras.graph.structure import eligible_layers
from bitat_keras.inspect.callbacks import flip_rate
from bitat_keras.method import transform
from bitat_keras.method.statistics import patch_rows
from bitat_keras.method.trained_block import partition
from bitat_keras.nn.layers import BinaryConv2D
from bitat_keras.nn.quantizers import numpy_sign


def _as_matrix(w):
    w = np.asarray(w, dtype=np.float64)
    return w.reshape(-1, w.shape[-1])


def signs_kept(w_fp, w_q):
    """Fraction of the weights whose binary sign equals the pre-trained weight's sign."""
    return 1.0 - flip_rate(numpy_sign(w_fp), numpy_sign(w_q))


def best_scale_error(target, binary):
    """sum_o min_a ||target[:, o] - a * binary[:, o]||^2: the squared error left when every
    column (output channel) of ``binary`` gets its least-squares scale
    a[o] = <target[:, o], binary[:, o]> / ||binary[:, o]||^2 (a zero column keeps its error)."""
    target, binary = _as_matrix(target), _as_matrix(binary)
    norm = np.sum(binary**2, axis=0)
    scale = np.divide(
        np.sum(target * binary, axis=0), norm, out=np.zeros_like(norm), where=norm > 0
    )
    return float(np.sum((target - binary * scale) ** 2))


def q_orig(w_fp, w_q, fit_scale=False):
    """Eq. 2's objective at the final binary weights: ||w_fp - w_q||_F^2.

    ``fit_scale``: w_q's signs with each output channel's least-squares scale instead of
    w_q's own scale (see the module docstring).
    """
    if fit_scale:
        return best_scale_error(w_fp, numpy_sign(w_q))
    return float(np.sum((_as_matrix(w_fp) - _as_matrix(w_q)) ** 2))


def q_ours(w_fp, w_q, s, v, ids=None, fit_scale=False):
    """Eq. 6 without the l1 term: ||diag(s) V^T P (w_fp - w_q)||_F^2 (P = I if ids is None).

    ``fit_scale``: w_q's signs with each output channel's least-squares scale for this
    weighted error, the minimum over scaled binary kernels with w_q's signs.
    """

    def weigh(m):  # diag(s) V^T P m
        m = _as_matrix(m)
        if ids is not None:
            m = transform.group_means(m, ids, int(np.max(ids)) + 1)
        return np.asarray(s)[:, None] * (np.asarray(v).T @ m)

    if fit_scale:
        return best_scale_error(weigh(w_fp), weigh(numpy_sign(w_q)))
    return float(np.sum(weigh(_as_matrix(w_fp) - _as_matrix(w_q)) ** 2))


def quantization_errors(fp_model, binary_model, images, *, max_rows=4096, seed=0):
    """Per-layer Q_orig and Q_ours between the pre-trained and the binary weights (Fig. 8).

    s and V of each layer come from the pre-trained model's own inputs (Eq. 10, one layer
    at a time, no cross-layer terms), as in the paper's Sec. 7.4.

    Args:
        fp_model: the pre-trained full-precision model.
        binary_model: the binarized model (same layer names).
        images: a batch of inputs for the statistics.

    Returns:
        ``{"layers": {name: {...}}, ...}``: per layer and summed over the layers, ``q_orig``,
        ``q_ours``, their ``ratio``, the scale-free ``q_orig_fit`` and ``q_ours_fit``
        (``fit_scale=True``), and ``signs_kept`` (the total: over all the layers' weights).

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
        layers[name] = {
            "q_orig": qo,
            "q_ours": qs,
            "ratio": qs / qo if qo else float("nan"),
            "q_orig_fit": q_orig(w_fp, w_q, fit_scale=True),
            "q_ours_fit": q_ours(w_fp, w_q, s, v, fit_scale=True),
            "signs_kept": signs_kept(w_fp, w_q),
            "size": int(np.size(w_fp)),
        }
    total = {
        k: sum(r[k] for r in layers.values())
        for k in ("q_orig", "q_ours", "q_orig_fit", "q_ours_fit")
    }
    size = sum(r["size"] for r in layers.values())
    kept = sum(r["signs_kept"] * r["size"] for r in layers.values())
    return {
        "layers": layers,
        **total,
        "ratio": total["q_ours"] / total["q_orig"] if total["q_orig"] else float("nan"),
        "signs_kept": kept / size if size else float("nan"),
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
    dims = {n: transform.input_dims(model.get_layer(n)) for n in names}
    full = agg = 0
    for block in partition({n: model.get_layer(n).kernel_size for n in names}, blocks):
        full += sum(dims[n] for n in block) ** 2
        agg += sum(transform.slot_size(dims[n], groups) for n in block) ** 2
    return {"full": full, "aggregated": agg, "ratio": agg / full if full else 0.0}
