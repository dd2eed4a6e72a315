"""ReActNet-A style MobileNetV1: the binary network and its full-precision twin."""

import keras

from bitat_keras.nn.layers import BinaryConv2D, LearnableBias, RPReLU

__all__ = ["BN_MOMENTUM", "MOBILENET_V1_BLOCKS", "reactnet_mobilenet"]

# (filters, strides) of the 13 MobileNetV1 blocks used by ReActNet-A.
MOBILENET_V1_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip

# BatchNorm's momentum in reactnet_mobilenet: its moving statistics follow the weights within
# tens of steps (Keras' 0.99 needs hundreds, so a short training run leaves them stale and
# inference-mode accuracy near chance).
BN_MOMENTUM = 0.9


def _batch_norm(name):
    return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=name)


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
    y = _batch_norm(p + "bn1")(y)
    shortcut = x
    if strides == 2:
        shortcut = keras.layers.AveragePooling2D(2, padding="same", name=p + "pool")(x)
    y = keras.layers.Add(name=p + "add1")([y, shortcut])
    y = RPReLU(name=p + "rprelu1")(y)

    z = LearnableBias(name=p + "move2")(y)
    if out_ch == in_ch:
        z = _conv(binary, out_ch, 1, 1, p + "conv1x1")(z)
        z = _batch_norm(p + "bn2")(z)
        z = keras.layers.Add(name=p + "add2")([z, y])
    else:  # out_ch == 2 * in_ch: two 1x1 convs, each with the shortcut, concatenated.
        halves = []
        for part in "ab":
            h = _conv(binary, in_ch, 1, 1, p + f"conv1x1_{part}")(z)
            h = _batch_norm(p + f"bn2{part}")(h)
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
    Its BatchNorms use momentum ``BN_MOMENTUM`` (0.9), so that a short training run leaves
    no stale moving statistics.

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
    x = _batch_norm("stem_bn")(x)
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
