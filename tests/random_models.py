"""Random small CNNs built from the parts users write, reproducible from a seed.

``random_cnn(seed)`` draws a functional or Sequential model of 12-16 px inputs: Conv2D of
kernel 1/3/5, strides 1/2, padding same/valid, with or without bias; BatchNorm; ReLU, ReLU6,
LeakyReLU, swish, GELU, sigmoid, tanh or no activation; max/average pooling; Add shortcuts,
Concatenate, Dropout, Rescaling; and depthwise, separable, grouped and dilated convs, which
must stay float. ``describe(model)`` is a one-line summary for failure messages.
"""

import keras
import numpy as np
from keras import layers

ACTIVATIONS = (None, "relu", "relu6", "leaky_relu", "swish", "gelu", "sigmoid", "tanh")
FLOAT_CONVS = ("depthwise", "separable", "grouped", "dilated")


class _Draw:
    """The random choices of one model."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def chance(self, p):
        return bool(self.rng.random() < p)


def _activation(draw):
    name = draw.pick(ACTIVATIONS)
    if name is None:
        return []
    if name == "leaky_relu":
        return [layers.LeakyReLU(negative_slope=0.1)]
    if name == "relu6":
        return [layers.ReLU(max_value=6.0)]
    return [layers.Activation(name)]


def _conv_unit(draw, channels, size):
    """A Conv2D (binarizable) with optional BatchNorm and activation; the new size."""
    kernel = draw.pick((1, 3, 5) if size >= 5 else (1, 3))
    strides = 2 if size >= 6 and draw.chance(0.3) else 1
    padding = "valid" if size - kernel >= 4 and draw.chance(0.3) else "same"
    unit = [
        layers.Conv2D(channels, kernel, strides=strides, padding=padding, use_bias=draw.chance(0.5))
    ]
    if draw.chance(0.6):
        unit.append(layers.BatchNormalization())
    unit += _activation(draw)
    if padding == "valid":
        size = size - kernel + 1
    return unit, -(-size // strides)


def _float_conv(draw, channels):
    kind = draw.pick(FLOAT_CONVS)
    if kind == "depthwise":
        return [layers.DepthwiseConv2D(3, padding="same")], channels
    if kind == "separable":
        return [layers.SeparableConv2D(channels, 3, padding="same")], channels
    if kind == "grouped":
        return [layers.Conv2D(channels, 3, padding="same", groups=2)], channels
    return [layers.Conv2D(channels, 3, padding="same", dilation_rate=2)], channels


def _apply(stack, x):
    for layer in stack:
        x = layer(x)
    return x


def _sequential(draw, size, channels_in, classes):
    stack = [keras.Input((size, size, channels_in))]
    if draw.chance(0.3):
        stack.append(layers.Rescaling(0.5, offset=-0.25))
    channels = draw.pick((4, 8))
    stack += [layers.Conv2D(channels, 3, padding="same"), layers.BatchNormalization()]
    stack += _activation(draw)
    for _ in range(int(draw.rng.integers(2, 5))):
        roll = draw.rng.random()
        if roll < 0.6:
            channels = draw.pick((4, 8, 12))
            unit, size = _conv_unit(draw, channels, size)
            stack += unit
        elif roll < 0.75 and size >= 4:
            pool = draw.pick((layers.MaxPooling2D, layers.AveragePooling2D))
            stack.append(pool(2, padding="same"))
            size = -(-size // 2)
        elif roll < 0.9:
            unit, channels = _float_conv(draw, channels if channels % 2 == 0 else 4)
            stack += unit
        else:
            stack.append(layers.Dropout(0.2))
    stack += [layers.GlobalAveragePooling2D(), layers.Dense(classes)]
    return keras.Sequential(stack, name="random_sequential")


def _functional(draw, size, channels_in, classes):
    inputs = keras.Input((size, size, channels_in))
    x = inputs
    if draw.chance(0.3):
        x = layers.Rescaling(0.5, offset=-0.25)(x)
    channels = draw.pick((4, 8))
    x = _apply([layers.Conv2D(channels, 3, padding="same"), *_activation(draw)], x)
    for _ in range(int(draw.rng.integers(2, 5))):
        roll = draw.rng.random()
        if roll < 0.35:  # a conv unit, chained to the next
            channels = draw.pick((4, 8, 12))
            unit, size = _conv_unit(draw, channels, size)
            x = _apply(unit, x)
        elif roll < 0.6:  # a shortcut around one or two conv units (stride 1, same)
            y = x
            for _ in range(int(draw.rng.integers(1, 3))):
                unit = [layers.Conv2D(channels, draw.pick((1, 3)), padding="same",
                                      use_bias=draw.chance(0.5))]  # fmt: skip
                if draw.chance(0.6):
                    unit.append(layers.BatchNormalization())
                y = _apply(unit + _activation(draw), y)
            x = layers.Add()([x, y])
            x = _apply(_activation(draw), x)
        elif roll < 0.75:  # two branches concatenated
            a, _ = _conv_unit(draw, 4, 0)  # size 0: kernel 1 or 3, stride 1, same
            b, _ = _conv_unit(draw, 4, 0)
            x = layers.Concatenate()([_apply(a, x), _apply(b, x)])
            channels = 8
        elif roll < 0.85 and size >= 4:
            pool = draw.pick((layers.MaxPooling2D, layers.AveragePooling2D))
            x = pool(2, padding="same")(x)
            size = -(-size // 2)
        elif roll < 0.95:
            if channels % 2:
                x = layers.Conv2D(4, 1)(x)
                channels = 4
            unit, channels = _float_conv(draw, channels)
            x = _apply(unit, x)
        else:
            x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(classes)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs, name="random_functional")


def random_cnn(seed, classes=3):
    """A random small CNN (functional two times in three, else Sequential)."""
    draw = _Draw(seed)
    size = draw.pick((12, 14, 16))
    channels_in = draw.pick((1, 3))
    build = _functional if draw.chance(2 / 3) else _sequential
    keras.utils.set_random_seed(seed)
    return build(draw, size, channels_in, classes)


def describe(model):
    """One line: the layers in order, with kernel, strides, padding and activation."""
    parts = []
    for layer in model.layers:
        config = layer.get_config()
        text = type(layer).__name__
        if "kernel_size" in config:
            text += f"{config['kernel_size'][0]}/s{config.get('strides', (1,))[0]}"
            text += f"/{config.get('padding', '')[0]}"
        if isinstance(layer, layers.Activation):
            text = config["activation"]
        parts.append(text)
    return f"{model.name}: " + " ".join(parts)
