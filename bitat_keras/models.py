"""ReActNet-A style MobileNetV1 (binary and full-precision twin) and `binarize`."""

import keras

from bitat_keras.layers import BinaryConv2D, LearnableBias, RPReLU
from bitat_keras.summary import summary

__all__ = [
    "MOBILENET_V1_BLOCKS",
    "binarize",
    "check_model",
    "eligible_layers",
    "reactnet_mobilenet",
    "summary",
    "walk_layers",
]

# (filters, strides) of the 13 MobileNetV1 blocks used by ReActNet-A.
MOBILENET_V1_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip


def _conv(binary, filters, kernel_size, strides, name):
    if binary:
        return BinaryConv2D(filters, kernel_size, strides=strides, use_bias=False, name=name)
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=False, name=name
    )


def _block(x, index, in_ch, out_ch, strides, binary):
    """One ReActNet-A block: binary 3x3 conv and binary 1x1 conv(s), each with a shortcut."""
    p = f"block{index}_"
    y = LearnableBias(name=p + "move1")(x)
    y = _conv(binary, in_ch, 3, strides, p + "conv3x3")(y)
    y = keras.layers.BatchNormalization(name=p + "bn1")(y)
    shortcut = x
    if strides == 2:
        shortcut = keras.layers.AveragePooling2D(2, padding="same", name=p + "pool")(x)
    y = keras.layers.Add(name=p + "add1")([y, shortcut])
    y = RPReLU(name=p + "rprelu1")(y)

    z = LearnableBias(name=p + "move2")(y)
    if out_ch == in_ch:
        z = _conv(binary, out_ch, 1, 1, p + "conv1x1")(z)
        z = keras.layers.BatchNormalization(name=p + "bn2")(z)
        z = keras.layers.Add(name=p + "add2")([z, y])
    else:  # out_ch == 2 * in_ch: two 1x1 convs, each with the shortcut, concatenated.
        halves = []
        for part in "ab":
            h = _conv(binary, in_ch, 1, 1, p + f"conv1x1_{part}")(z)
            h = keras.layers.BatchNormalization(name=p + f"bn2{part}")(h)
            halves.append(keras.layers.Add(name=p + f"add2{part}")([h, y]))
        z = keras.layers.Concatenate(name=p + "concat")(halves)
    return RPReLU(name=p + "rprelu2")(z)


def reactnet_mobilenet(
    input_shape=(32, 32, 3),
    num_classes=100,
    width_multiplier=1.0,
    binary=False,
    *,
    blocks=None,
    stem_filters=32,
    stem_strides=None,
    name=None,
):
    """Build ReActNet-A's binary-friendly MobileNetV1.

    Every binary conv is a regular 3x3 or 1x1 conv with a shortcut; the stem conv and the
    classifier stay full precision. A block that doubles the channels uses two 1x1 convs whose
    outputs are concatenated (as in ReActNet), so every 1x1 keeps an identity shortcut.

    Args:
        input_shape: (height, width, channels). 28x28/32x32 inputs use a stride-1 stem;
            inputs of 112 pixels or more (ImageNet's 224x224) use a stride-2 stem.
        num_classes: size of the logits output (no softmax).
        width_multiplier: scales every width; ratios between blocks are kept exact.
        binary: ``True`` builds ``BinaryConv2D`` layers, ``False`` the full-precision twin
            with the same layer names and weight layout.
        blocks: sequence of ``(filters, strides)``; each block's filters must equal or
            double the previous width. Defaults to MobileNetV1's 13 blocks.
        stem_filters: width of the stem conv before the multiplier.
        stem_strides: override of the stem stride.
        name: model name.

    Returns:
        A functional ``keras.Model`` producing logits.

    Example:
        >>> model = reactnet_mobilenet((28, 28, 1), num_classes=10, width_multiplier=0.25)
    """
    if len(input_shape) != 3 or any(int(d) < 1 for d in input_shape):
        raise ValueError(
            f"`input_shape` must be (height, width, channels). Received: {input_shape!r}"
        )
    if not width_multiplier > 0:
        raise ValueError(f"`width_multiplier` must be > 0. Received: {width_multiplier!r}")
    blocks = tuple(MOBILENET_V1_BLOCKS if blocks is None else blocks)
    if not blocks:
        raise ValueError("`blocks` must contain at least one (filters, strides) pair.")
    if stem_strides is None:
        stem_strides = 2 if min(input_shape[:2]) >= 112 else 1

    width = max(1, round(stem_filters * width_multiplier))
    base = stem_filters
    inputs = keras.Input(tuple(input_shape), name="image")
    x = keras.layers.Conv2D(
        width, 3, strides=stem_strides, padding="same", use_bias=False, name="stem_conv"
    )(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    for i, (filters, strides) in enumerate(blocks, start=1):
        if filters not in (base, 2 * base) or strides not in (1, 2):
            raise ValueError(
                f"Block {i}: filters must equal or double the previous width ({base}) and "
                f"strides must be 1 or 2. Received: ({filters}, {strides})"
            )
        out = width * (filters // base)
        x = _block(x, i, width, out, strides, binary)
        width, base = out, filters
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, name="classifier")(x)
    kind = "binary" if binary else "fp"
    return keras.Model(inputs, outputs, name=name or f"reactnet_mobilenet_{kind}")


def _is_plain_conv(layer):
    return (
        isinstance(layer, keras.layers.Conv2D)
        and getattr(layer, "groups", 1) == 1
        and type(layer) in (keras.layers.Conv2D, BinaryConv2D)
    )


def check_model(model, what="model", training=True):
    """Raise a clear error, before any work, unless ``model`` is a built ``keras.Model``
    this library can handle.

    For conversion (``training=False``) that is any built model. For ``progressive_fit``
    (``training=True``) also: one input, no nested sub-model holding convolutions (their
    convs would be skipped silently: build the model flat), and no dilated eligible conv
    (the input statistics, Eq. 5, are im2col patches of an undilated kernel).

    Args:
        model: the object to check.
        what: the argument's name in error messages.
        training: check what ``progressive_fit`` needs too.

    Example:
        >>> check_model(reactnet_mobilenet((28, 28, 1), 10, 0.25))
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`{what}` must be a keras.Model (functional or Sequential). "
            f"Received: {model!r} of type {type(model).__name__}"
        )
    if not model.built or (training and not getattr(model, "inputs", None)):
        raise ValueError(
            f"Model {model.name!r} is not built: give it a `keras.Input` (a functional or "
            "Sequential model with a known input shape) before passing it."
        )
    if not training:
        return
    if len(model.inputs) != 1:
        raise ValueError(
            f"Model {model.name!r} has {len(model.inputs)} inputs; progressive_fit needs a "
            "model with exactly one image input."
        )
    for layer in model.layers:
        if isinstance(layer, keras.Model) and any(
            isinstance(sub, keras.layers.Conv2D) for sub in walk_layers(layer)
        ):
            raise ValueError(
                f"Model {model.name!r} nests the sub-model {layer.name!r}, which holds "
                "convolutions progressive_fit would not see. Build the model flat (call the "
                "sub-model's layers directly on the outer model's tensors)."
            )
    for name in eligible_layers(model):
        layer = model.get_layer(name)
        if tuple(layer.dilation_rate) != (1, 1):
            raise ValueError(
                f"Layer {name!r} has dilation_rate={tuple(layer.dilation_rate)}; BiTAT's "
                "input statistics support undilated convs only (dilation_rate=1)."
            )


def walk_layers(layer):
    """Yield every sub-layer of ``layer`` (nested models included), depth first."""
    for sub in getattr(layer, "layers", None) or ():
        yield sub
        yield from walk_layers(sub)


def eligible_layers(model):
    """Names of the convs `binarize` turns binary, bottom to top.

    Every regular ``Conv2D`` (groups=1; no depthwise or separable conv) except the first conv
    of the model and a conv that is the model's last weighted layer (the classifier).
    """
    weighted = [layer for layer in model.layers if layer.weights]
    convs = [layer for layer in weighted if isinstance(layer, keras.layers.Conv2D)]
    first = convs[0] if convs else None
    head = weighted[-1] if weighted else None
    return [
        layer.name
        for layer in weighted
        if _is_plain_conv(layer) and layer is not first and layer is not head
    ]


def binarize(model, *, input_quantizer="approx_sign", kernel_quantizer="ste_sign", pad_values=1.0):
    """Return a new model where every eligible ``Conv2D`` is a ``BinaryConv2D``.

    Weights are copied from ``model``; the original is left untouched. Layers that are
    already ``BinaryConv2D`` get the given quantizers too.

    Args:
        model: a built functional or Sequential ``keras.Model``.
        input_quantizer: quantizer for the convs' inputs (``None`` keeps them real).
        kernel_quantizer: quantizer for the kernels (``None`` keeps them real).
        pad_values: one-padding (1.0, converts to LCE) or zero-padding (0.0).

    Example:
        >>> fp = reactnet_mobilenet((28, 28, 1), num_classes=10, width_multiplier=0.25)
        >>> bnn = binarize(fp)
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model. Received: {type(model).__name__}")
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} is not built. Build it (call it on data or give it an "
            "Input) before binarizing."
        )
    names = set(eligible_layers(model))

    def clone(layer):
        if layer.name not in names:
            return layer.__class__.from_config(layer.get_config())
        config = layer.get_config()
        for key in ("groups", "lora_rank", "lora_alpha"):
            config.pop(key, None)
        config.update(
            pad_values=pad_values,
            input_quantizer=input_quantizer,
            kernel_quantizer=kernel_quantizer,
        )
        if type(layer) is BinaryConv2D:
            config.pop("kernel_scale", None)
            return BinaryConv2D.from_config({**config, "kernel_scale": layer.kernel_scale})
        return BinaryConv2D.from_config(config)

    new = keras.models.clone_model(model, clone_function=clone)
    for src, dst in zip(model.layers, new.layers, strict=True):
        dst.set_weights(src.get_weights())
    return new
