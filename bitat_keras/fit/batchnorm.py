"""BatchNorm re-estimation: the moving statistics recomputed from training-mode forward
passes, so that inference mode (thresholds, evaluation, checkpoints, the gradient
ratio, the returned model) sees the current weights' statistics."""

import weakref

import keras

from bitat_keras.fit import backend

__all__ = ["recalibrate_batchnorm"]


def recalibrate_batchnorm(net, batches, layers=None, reuse_key=None):
    """Re-estimate BatchNorm moving statistics as a cumulative average over ``batches``
    (forward passes in training mode, no gradient).

    Short training phases leave the moving statistics behind the weights (BatchNorm's
    momentum 0.99 needs hundreds of steps), so inference-mode accuracy lags training-mode
    accuracy until the statistics are re-estimated. The forward passes are stateless (the
    model's variables change once, at the end); under JAX (jitted) and TensorFlow
    (``tf.function``) they run traced, once per call (or once for every call with the same
    ``reuse_key``); under torch eagerly.

    Args:
        net: the model whose forward (in training mode) runs the BatchNorms.
        batches: an iterable of input batches; empty batches (0 rows, as a slice past the
            data's end gives) are skipped: their mean and variance are undefined.
        layers: the BatchNormalization layers to re-estimate (default: every trainable one
            of ``net.layers``); the others keep their statistics.
        reuse_key: None (trace the forward for this call), or a hashable: later calls with
            the same key (and network, layers and input shape) reuse the trace. The caller
            vouches that nothing the forward reads outside ``net``'s variables has changed
            since (a quantizer swapped on a layer, a variable of an outer model such as a
            gate): such state is read at its value of the first trace.

    Returns:
        The number of (non-empty) batches used.
    """
    every = [layer for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization)]
    bns = [layer for layer in every if layer.trainable] if layers is None else list(layers)
    if not bns:
        return 0
    others = [layer for layer in every if all(layer is not bn for bn in bns)]
    momenta = [bn.momentum for bn in bns + others]
    batches = (x for x in batches if keras.tree.flatten(x)[0].shape[0] != 0)
    count = 0
    try:
        for bn in others:
            bn.momentum = 1.0  # keep their statistics: only ``layers`` are re-estimated
        for bn in bns:
            bn.momentum = 0.0  # the forward's moving statistics are the batch's own
        count = _average_batch_statistics(net, bns, batches, reuse_key)
    finally:
        for bn, m in zip(bns + others, momenta, strict=True):
            bn.momentum = m
    return count


_STATISTICS_FORWARD = weakref.WeakKeyDictionary()  # net -> {BatchNorms: jitted forward}


def _average_batch_statistics(net, bns, batches, reuse_key=None):
    """One ``backend.stateless_forward`` per batch (traced once per network, set of
    BatchNorms and input shape where the backend traces), with the momentum of ``bns`` at
    0, so that each forward returns the batch's mean and variance; their running mean over
    the batches is assigned at the end."""
    compiled = _STATISTICS_FORWARD.setdefault(net, {})
    key = (reuse_key, tuple(id(bn) for bn in bns))
    if reuse_key is None or key not in compiled:
        compiled[key] = backend.stateless_forward(net, training=True)
    forward = compiled[key]
    position = {id(v): i for i, v in enumerate(net.non_trainable_variables)}
    targets = [v for bn in bns for v in (bn.moving_mean, bn.moving_variance)]
    count, means = 0, None
    for count, x in enumerate(batches, start=1):
        _, values = forward(x)
        batch = [values[position[id(v)]] for v in targets]
        if means is None:
            means = batch
        else:  # running mean: m + (b - m) / count
            means = [m + (b - m) / count for m, b in zip(means, batch, strict=True)]
    for v, m in zip(targets, means or [], strict=True):
        v.assign(m)
    return count
