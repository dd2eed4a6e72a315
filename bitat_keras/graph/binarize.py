"""``binarize``: a model's eligible convs become ``BinaryConv2D`` layers, weights copied."""

import keras

from bitat_keras.fit.data import sample_images
from bitat_keras.graph.binarization_plan import plan
from bitat_keras.graph.precision import float32_config, float32_policy
from bitat_keras.graph.structure import eligible_layers, flatten_model
from bitat_keras.graph.thresholds import NO_DATA_THRESHOLD, set_thresholds
from bitat_keras.nn.layers import BinaryConv2D

__all__ = ["binarize", "copy_weights"]


def binarize(
    model,
    data=None,
    *,
    input_quantizer="approx_sign",
    kernel_quantizer="ste_sign",
    pad_values=1.0,
    thresholds="auto",
):
    """Return a new model where every eligible ``Conv2D`` is a ``BinaryConv2D``.

    Weights are copied from ``model``; the original is left untouched. Layers that are
    already ``BinaryConv2D`` get the given quantizers too. ``bk.plan(model, data)`` shows
    beforehand which layers are binarized, which stay float and why.

    A binarized conv whose input is one-signed (after a ReLU/ReLU6, ``sign`` maps every
    value to +1) gets a learnable input threshold (``sign(x - t)``), initialised from
    ``data`` so that the sign splits each channel's values; without data, thresholds go to
    the convs fed by a ReLU/ReLU6 in the graph and start at a small positive value (0 maps
    to -1, positive values to +1). A model under a mixed-precision policy comes back in
    float32 (binary layers and LCE export compute in float32).

    Args:
        model: a built functional or Sequential ``keras.Model``.
        data: optional sample of the training data (``(x, y)`` arrays, images, or a
            ``tf.data.Dataset``) for the input statistics.
        input_quantizer: quantizer for the convs' inputs (``None`` keeps them real).
        kernel_quantizer: quantizer for the kernels (``None`` keeps them real).
        pad_values: one-padding (1.0, converts to LCE) or zero-padding (0.0).
        thresholds: ``"auto"`` (as above), or the names of the layers that get one
            (initialised from ``data`` when given).

    Example:
        >>> fp = bk.models.reactnet_mobilenet((28, 28, 1), num_classes=10, width_multiplier=0.25)
        >>> bnn = binarize(fp)
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model. Received: {type(model).__name__}")
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} is not built. Build it (call it on data or give it an "
            "Input) before binarizing."
        )
    if thresholds == "auto":  # the plan of the user's model: it names nested sub-models
        decided = plan(model, data, input_quantized=input_quantizer is not None, warn=True)
        decided.check()
        thresholds = decided.thresholded
    model = flatten_model(model)  # nested sub-models: one flat network
    names = set(eligible_layers(model))
    thresholds = list(thresholds) if input_quantizer is not None else []
    unknown = sorted(set(thresholds) - names)
    if unknown:
        raise ValueError(
            f"`thresholds` names layers that are not binarized: {unknown}. Binarized layers: "
            f"{sorted(names)}"
        )

    def clone(layer):
        config = float32_config(layer.get_config())
        if layer.name not in names:
            return layer.__class__.from_config(config)
        for key in ("groups", "lora_rank", "lora_alpha"):
            config.pop(key, None)
        config.update(
            pad_values=pad_values,
            input_quantizer=input_quantizer,
            kernel_quantizer=kernel_quantizer,
            input_threshold=layer.name in thresholds or getattr(layer, "input_threshold", False),
        )
        if type(layer) is BinaryConv2D:
            config["kernel_scale"] = layer.kernel_scale
        return BinaryConv2D.from_config(config)

    with float32_policy():
        new = keras.models.clone_model(model, clone_function=clone)
    copy_weights(model, new)
    # a BinaryConv2D that had a threshold keeps its trained values
    thresholds = [n for n in thresholds if not getattr(model.get_layer(n), "input_threshold", 0)]
    if thresholds and data is None:
        for name in thresholds:
            new.get_layer(name).threshold.assign(
                keras.ops.full(new.get_layer(name).threshold.shape, NO_DATA_THRESHOLD)
            )
    elif thresholds:
        set_thresholds(new, thresholds, sample_images(data, 256, 0))
    return new


def copy_weights(src_model, dst_model):
    """Copy every layer's weights from ``src_model`` to its clone ``dst_model``; a
    ``BinaryConv2D`` that gained an input threshold keeps its own threshold values (they
    are the layer's last weights)."""
    for src, dst in zip(src_model.layers, dst_model.layers, strict=True):
        weights = src.get_weights()
        extra = dst.weights[len(weights) :]
        if extra and all(w.path.endswith("input_threshold") for w in extra):
            weights += [keras.ops.convert_to_numpy(w) for w in extra]
        dst.set_weights(weights)
