"""Input statistics of a layer (Eq. 5, 10; appendix 7.2): what its kernel multiplies."""

import keras
import numpy as np

from bitat_keras.method.transform import im2col
from bitat_keras.nn.quantizers import numpy_sign


def layer_input_model(model, layer):
    """A model from ``model``'s inputs to ``layer``'s input, lower layers in their current state."""
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, layer.input)


def patch_rows(
    model, layer, images, *, binarized=True, max_rows=4096, seed=0, batch_size=256, training=False
):
    """im2col rows (N x kh*kw*cin) of the operand that ``layer``'s kernel multiplies.

    With ``binarized=True`` the layer's input is passed through the forward sign
    (``quantizers.numpy_sign``) and padded with the layer's ``pad_values``, exactly as the
    binarized convolution sees it; otherwise the raw input with zero padding. Rows are
    subsampled uniformly (seeded) to ``max_rows``, so the memory bound is max_rows * d
    float32 values. With ``training=True`` the layers below run as in a training step
    (BatchNorm normalises with each batch's own statistics), what the layer sees while it
    trains; the BatchNorm moving statistics are left as they were.
    """
    sub = layer_input_model(model, layer)
    bns = [bn for bn in sub.layers if isinstance(bn, keras.layers.BatchNormalization)]
    momenta = [bn.momentum for bn in bns]
    try:
        for bn in bns:
            bn.momentum = 1.0  # a training-mode call would move the moving statistics
        # Plain (eager) calls: a predict() per layer would trace a new tf.function each time.
        inputs = np.concatenate(
            [
                keras.ops.convert_to_numpy(sub(images[i : i + batch_size], training=training))
                for i in range(0, len(images), batch_size)
            ]
        )
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
    pad_value = 0.0
    if binarized:
        if getattr(layer, "input_threshold", False):  # sign(x - t)
            inputs = inputs - keras.ops.convert_to_numpy(layer.threshold)
        inputs = numpy_sign(inputs).astype(np.float32)
        pad_value = getattr(layer, "pad_values", 0.0)
    rows = im2col(
        inputs,
        layer.kernel_size,
        layer.strides,
        padding=layer.padding,
        pad_value=pad_value,
        max_rows=max_rows,
        seed=seed,
    )
    return np.ascontiguousarray(rows, dtype=np.float32)
