"""Model summary by precision: 1-bit and 32-bit parameters, memory and MACs per layer."""

import keras
import numpy as np

from bitat_keras.graph.structure import check_model, walk_layers
from bitat_keras.nn.layers import RPReLU, has_binary_kernel, is_binary_conv

__all__ = ["flatbuffer_estimate", "summary"]

KIB = 1024
# An LCE flatbuffer's size beyond its weights: a fixed part (header, subgraph, signature,
# operator-code table) and a part per operator (its output tensor's table entry, shape and
# name). Least squares over 8 converted models with trained-like weights (binarized
# Conv-BN-ReLU Sequentials, ReActNet-A MobileNets of 1-5 blocks, keras.applications
# MobileNet at alpha 0.25; 3.9 to 196 KiB): within 15 % for the smallest, 3 % above 50 KiB.
FLATBUFFER_FIXED_BYTES = 2060
FLATBUFFER_OP_BYTES = 174


def _size(shape):
    return int(np.prod([int(d) for d in shape]))


def _shape(tensor):
    return tuple(tensor.shape[1:])


def _macs(layer):
    """Multiply-accumulates of one forward pass of one sample: (binary, float). A conv is
    binary when both its input and its kernel are binarized (an XNOR-popcount on LCE)."""
    try:
        out, inp = _shape(layer.output), _shape(layer.input)
    except (AttributeError, ValueError):  # not in a graph, or called several times
        return 0, 0
    if isinstance(layer, keras.layers.SeparableConv2D):
        kh, kw = layer.kernel_size
        depthwise = _size(out[:-1]) * inp[-1] * layer.depth_multiplier * kh * kw
        return 0, depthwise + _size(out) * inp[-1] * layer.depth_multiplier
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        return 0, _size(out) * kh * kw
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        macs = _size(out) * kh * kw * inp[-1] // getattr(layer, "groups", 1)
        return (macs, 0) if is_binary_conv(layer) else (0, macs)
    if isinstance(layer, keras.layers.Dense):
        return 0, _size(out) * inp[-1]
    return 0, 0


def flatbuffer_estimate(model):
    """``(weight_bytes, overhead_bytes)`` of ``model``'s LCE flatbuffer, estimated.

    Weights as LCE stores them: a binary conv's kernel bitpacked in 32-bit words along the
    input channels (``4 * out * kh * kw * ceil(cin / 32)`` bytes) plus a float multiplier
    and bias per output channel; BatchNorm folded into one float vector; every other weight
    in float32. Overhead: ``FLATBUFFER_FIXED_BYTES`` plus ``FLATBUFFER_OP_BYTES`` per
    operator (a binary conv is two, ``LceQuantize`` and ``LceBconv2d``, three with an input
    threshold; RPReLU three; BatchNorm, dropout and inputs none; any other layer one).
    """
    weights, ops = 0, 0
    for layer in walk_layers(model):
        if getattr(layer, "layers", None) or isinstance(
            layer, keras.layers.InputLayer | keras.layers.Dropout
        ):
            continue
        params = [_size(w.shape) for w in layer.weights]
        if isinstance(layer, keras.layers.BatchNormalization):
            weights += 4 * _size(layer.moving_mean.shape)
        elif is_binary_conv(layer):
            kh, kw, cin, cout = (int(d) for d in layer.kernel.shape)
            weights += 4 * cout * kh * kw * -(-cin // 32) + 8 * cout + 4 * sum(params[1:])
            ops += 3 if getattr(layer, "threshold", None) is not None else 2
        else:
            weights += 4 * sum(params)
            ops += 3 if isinstance(layer, RPReLU) else 1
    return weights, FLATBUFFER_FIXED_BYTES + FLATBUFFER_OP_BYTES * ops


def summary(model, print_fn=print):
    """Per layer: 1-bit and 32-bit parameters, their memory in KiB, and binary and float
    multiply-accumulates (MACs) for one sample of the model's input shape; totals and the
    compression against the same model in float32. Like ``larq.models.summary``.

    A parameter is 1-bit when it is the kernel of a ``BinaryConv2D`` with a kernel quantizer;
    every other weight (BatchNorm statistics included) is 32-bit. A conv's MACs are binary
    when its input and kernel are both binarized. Memory counts 1/8 byte per 1-bit and 4
    bytes per 32-bit parameter; a deployed LCE flatbuffer adds operator metadata, pads binary
    kernels' input channels to a multiple of 32 and folds BatchNorm into two float vectors
    per channel (docs/api.md gives the measured difference).

    Args:
        model: a built ``keras.Model`` (binary layers or not; nested models are walked).
        print_fn: called with each line of the table (``None``: print nothing).

    Returns:
        A dict: ``layers`` (one dict per layer with weights or MACs: name, type,
        output_shape, binary_params, float_params, memory_kib, binary_macs, float_macs),
        ``total`` (the same sums), ``float_memory_kib``, ``compression``, and the LCE
        flatbuffer's estimated size ``flatbuffer_kib_estimate`` with its overhead
        ``flatbuffer_overhead_kib`` (``flatbuffer_estimate``): a small model's file is
        mostly overhead, so its memory alone understates it.

    Example:
        >>> stats = bk.models.summary(bnn)  # doctest: +SKIP
        >>> stats["total"]["binary_params"], stats["compression"]  # doctest: +SKIP
    """
    check_model(model, training=False)
    rows = []
    for layer in walk_layers(model):
        if getattr(layer, "layers", None):  # a nested model: its own layers are rows
            continue
        params = sum(_size(w.shape) for w in layer.weights)
        binary = _size(layer.kernel.shape) if has_binary_kernel(layer) else 0
        binary_macs, float_macs = _macs(layer)
        if not params and not binary_macs and not float_macs:
            continue
        try:
            output_shape = _shape(layer.output)
        except (AttributeError, ValueError):
            output_shape = None
        rows.append(
            {
                "name": layer.name,
                "type": type(layer).__name__,
                "output_shape": output_shape,
                "binary_params": binary,
                "float_params": params - binary,
                "memory_kib": (binary / 8 + 4 * (params - binary)) / KIB,
                "binary_macs": binary_macs,
                "float_macs": float_macs,
            }
        )
    keys = ("binary_params", "float_params", "memory_kib", "binary_macs", "float_macs")
    total = {k: sum(r[k] for r in rows) for k in keys}
    float_memory = 4 * (total["binary_params"] + total["float_params"]) / KIB
    stats = {
        "layers": rows,
        "total": total,
        "float_memory_kib": float_memory,
        "compression": float_memory / total["memory_kib"] if total["memory_kib"] else 1.0,
    }
    stored, overhead = flatbuffer_estimate(model)
    stats["flatbuffer_kib_estimate"] = (stored + overhead) / KIB
    stats["flatbuffer_overhead_kib"] = overhead / KIB
    if print_fn is not None:
        for line in _table(model.name, stats):
            print_fn(line)
    return stats


def _table(name, stats):
    head = ("layer", "type", "output", "1-bit params", "32-bit params", "KiB", "binary MACs",
            "float MACs")  # fmt: skip
    lines = []
    for r in [*stats["layers"], {"name": "total", "type": "", "output_shape": "",
                                 **stats["total"]}]:  # fmt: skip
        shape = "" if r["output_shape"] in ("", None) else "x".join(map(str, r["output_shape"]))
        lines.append(
            (r["name"], r["type"], shape, f"{r['binary_params']:,}", f"{r['float_params']:,}",
             f"{r['memory_kib']:.2f}", f"{r['binary_macs']:,}", f"{r['float_macs']:,}")
        )  # fmt: skip
    widths = [max(len(str(row[i])) for row in [head, *lines]) for i in range(len(head))]

    def fmt(row):
        return "  ".join(
            str(c).ljust(w) if i < 3 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )

    rule = "-" * len(fmt(head))
    out = [f"Model {name!r}", rule, fmt(head), rule, *map(fmt, lines[:-1]), rule, fmt(lines[-1])]
    out.append(
        f"Memory {stats['total']['memory_kib']:.2f} KiB; the same model in float32 "
        f"{stats['float_memory_kib']:.2f} KiB; compression {stats['compression']:.2f}x"
    )
    out.append(
        f"LCE flatbuffer ~{stats['flatbuffer_kib_estimate']:.2f} KiB (estimate; weights as "
        f"stored plus an overhead of {stats['flatbuffer_overhead_kib']:.2f} KiB for the "
        "operator and tensor tables)"
    )
    return out
