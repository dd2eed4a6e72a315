"""Binary layers: BinaryConv2D (input + kernel binarization), LearnableBias and RPReLU."""

import math

import keras
from keras import ops

from bitat_keras.nn import constraints, quantizers
from bitat_keras.nn.registry import register, serialize

KERNEL_SCALES = ("per_channel", None)


def same_paddings(size, kernel, stride, dilation=1):
    """TF-SAME padding (low, high) for one spatial axis.

    total = max((ceil(n / s) - 1) * s + k_eff - n, 0); low = total // 2; high = total - low.
    LCE folds ``pad(x, these, 1.0)`` + VALID conv into one bitpacked conv only with this split.
    """
    k_eff = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + k_eff - size, 0)
    return total // 2, total - total // 2


@register
class BinaryConv2D(keras.layers.Conv2D):
    """A ``keras.layers.Conv2D`` whose input and kernel are binarized.

    The kernel used in the convolution is ``alpha[o] * sign(w[..., o])`` with
    ``alpha[o] = mean(|w[..., o]|)`` (the per-output-channel scale; the scale carries no
    gradient, as in ReActNet). With ``padding="same"`` and a binarized input, the input is
    padded with ``pad_values`` exactly like TF's SAME split and then convolved VALID, the
    pattern larq-compute-engine turns into an ``LceBconv2d``. Setting a quantizer to ``None``
    turns that side back to full precision; with both ``None`` the layer computes exactly like
    ``Conv2D`` (zero padding).

    Args:
        filters: number of output channels.
        kernel_size: int or tuple of 2 ints.
        strides: int or tuple of 2 ints.
        padding: ``"same"`` or ``"valid"``.
        pad_values: value used to pad the binarized input with ``padding="same"``: 1.0
            (one-padding, converts to LCE) or 0.0.
        input_quantizer: ``"approx_sign"`` (default), ``"ste_sign"``, a quantizer or ``None``.
        kernel_quantizer: ``"ste_sign"`` (default), ``"approx_sign"``, a quantizer or ``None``.
        kernel_scale: ``"per_channel"`` (mean |w| per output channel) or ``None`` (pure +-1).
            A kernel quantizer with a scale of its own (``"magnitude_aware_sign"``) gives
            the same mean |w| either way: it is applied once.
        input_threshold: ``True`` gives the layer a trainable per-input-channel threshold
            ``t`` and binarizes ``x - t`` instead of ``x`` (ReActNet's RSign shift). Needed
            when the input is one-signed, e.g. after a ReLU: ``sign(x)`` of values >= 0 is
            always +1 and carries nothing. ``bk.thresholds`` initialises ``t`` from data.
        **kwargs: any other ``keras.layers.Conv2D`` argument (``use_bias``, initializers,
            ``kernel_constraint`` which also accepts ``"weight_clip"``, ...). Only
            ``data_format="channels_last"`` is supported.

    Example:
        >>> x = keras.Input((28, 28, 16))
        >>> y = BinaryConv2D(32, 3, strides=2, use_bias=False)(x)
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="same",
        pad_values=1.0,
        input_quantizer="approx_sign",
        kernel_quantizer="ste_sign",
        kernel_scale="per_channel",
        input_threshold=False,
        **kwargs,
    ):
        if kwargs.get("data_format", "channels_last") not in (None, "channels_last"):
            raise ValueError(
                "BinaryConv2D supports data_format='channels_last' only (LCE is NHWC). "
                f"Received: data_format={kwargs['data_format']!r}"
            )
        if "kernel_constraint" in kwargs:
            kwargs["kernel_constraint"] = constraints.get(kwargs["kernel_constraint"])
        super().__init__(filters, kernel_size, strides=strides, padding=padding, **kwargs)
        if float(pad_values) not in (0.0, 1.0):
            raise ValueError(
                f"`pad_values` must be 0.0 or 1.0. Received: pad_values={pad_values!r}"
            )
        if kernel_scale not in KERNEL_SCALES:
            raise ValueError(
                f"`kernel_scale` must be one of {KERNEL_SCALES}. "
                f"Received: kernel_scale={kernel_scale!r}"
            )
        self.pad_values = float(pad_values)
        self.input_spec = None  # build() checks the rank with a clearer message
        self.input_quantizer = quantizers.get(input_quantizer)
        self.kernel_quantizer = quantizers.get(kernel_quantizer)
        self.kernel_scale = kernel_scale
        self.input_threshold = bool(input_threshold)
        self.threshold = None

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"BinaryConv2D {self.name!r} expects 4D input (batch, height, width, "
                f"channels). Received input shape: {tuple(input_shape)}"
            )
        super().build(input_shape)
        if self.input_threshold:
            self.threshold = self.add_weight(
                shape=(input_shape[-1],), initializer="zeros", name="input_threshold"
            )

    def save_own_variables(self, store):
        super().save_own_variables(store)  # kernel, bias (Conv2D's own layout)
        if self.built and self.threshold is not None:
            store[str(1 + self.use_bias)] = self.threshold

    def load_own_variables(self, store):
        super().load_own_variables(store)
        if self.built and self.threshold is not None:
            self.threshold.assign(store[str(1 + self.use_bias)])

    def shifted(self, x):
        """``x - t`` with the layer's input threshold, or ``x`` without one."""
        return x if self.threshold is None else x - self.threshold

    def quantized_kernel(self):
        """The kernel the convolution uses: ``alpha[o] * sign(w)`` (STE gradient)."""
        kernel, scale = self.kernel_and_scale()
        return kernel if scale is None else kernel * scale

    def kernel_and_scale(self):
        """``(sign(w), alpha)`` (alpha None without a per-channel scale), or ``(w, None)``
        for a real kernel. The convolution multiplies its output by alpha instead of its
        kernel: a sum of +-1 products is an exact integer in float32, so an output that is
        0 is exactly 0, as in LCE's integer kernel, and the next sign agrees with LCE's."""
        return quantizers.kernel_and_scale(self.kernel, self.kernel_quantizer, self.kernel_scale)

    def _one_padding(self, shape):
        pads = []
        for axis in (1, 2):
            if shape[axis] is None:
                raise ValueError(
                    f"BinaryConv2D {self.name!r} needs static height and width for "
                    f"padding='same' with pad_values={self.pad_values}. "
                    f"Received input shape: {tuple(shape)}"
                )
            pads.append(
                same_paddings(
                    shape[axis],
                    self.kernel_size[axis - 1],
                    self.strides[axis - 1],
                    self.dilation_rate[axis - 1],
                )
            )
        return [(0, 0), pads[0], pads[1], (0, 0)]

    def binarized_input(self, x):
        """``(input, padding)`` the convolution takes when the input is binarized:
        ``input_quantizer(x - t)``, padded with ``pad_values`` like TF's SAME split and
        convolved ``"valid"`` when ``padding="same"`` and ``pad_values`` is not 0, else
        the layer's own ``padding`` (the input quantizer must be set)."""
        x = self.input_quantizer(self.shifted(x))
        if self.padding == "same" and self.pad_values != 0.0:
            x = ops.pad(x, self._one_padding(x.shape), constant_values=self.pad_values)
            return x, "valid"
        return x, self.padding

    def call(self, inputs):
        x, padding = inputs, self.padding
        if self.input_quantizer is not None:
            x, padding = self.binarized_input(x)
        return self._convolve(x, *self.kernel_and_scale(), padding)

    def _convolve(self, x, kernel, scale, padding):
        """The convolution of the (already quantized and padded) input, times the
        per-channel ``scale`` (if any), bias, activation."""
        outputs = ops.conv(
            x,
            kernel,
            strides=self.strides,
            padding=padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        if scale is not None:
            if self.data_format == "channels_first":
                scale = ops.reshape(scale, (-1, 1, 1))
            outputs = outputs * scale
        if self.use_bias:
            outputs = outputs + self.bias
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "pad_values": self.pad_values,
                "input_quantizer": serialize(self.input_quantizer),
                "kernel_quantizer": serialize(self.kernel_quantizer),
                "kernel_scale": self.kernel_scale,
                "input_threshold": self.input_threshold,
            }
        )
        return config


def has_binary_kernel(layer):
    """Whether ``layer`` is a ``BinaryConv2D`` (or a subclass) whose kernel is binarized
    (``kernel_quantizer`` set): its kernel is stored as 1-bit and its signs can flip."""
    return isinstance(layer, BinaryConv2D) and layer.kernel_quantizer is not None


def is_binary_conv(layer):
    """Whether ``layer`` is a ``BinaryConv2D`` with both ``input_quantizer`` and
    ``kernel_quantizer`` set: a binary (XNOR-popcount) convolution, the layers LCE should
    turn into ``LceBconv2d`` ops. A layer with only one side binarized stays a float
    convolution."""
    return has_binary_kernel(layer) and layer.input_quantizer is not None


@register
class QuantConv2D(BinaryConv2D):
    """larq's ``QuantConv2D`` on Keras 3, so larq model code ports by changing the import.

    The same layer as ``BinaryConv2D`` with larq's arguments and defaults: no quantizer
    (a plain conv until you set one), ``padding="valid"``, ``pad_values=0.0`` and no implicit
    kernel scale (larq scales kernels with the ``"magnitude_aware_sign"`` quantizer instead).
    With both quantizers set it converts to an ``LceBconv2d`` like ``BinaryConv2D``.

    Args:
        filters, kernel_size, strides, padding: as ``keras.layers.Conv2D``.
        pad_values: 0.0 (larq's default) or 1.0 (one-padding, LCE's fastest).
        input_quantizer, kernel_quantizer: None, an alias (``"ste_sign"``,
            ``"approx_sign"``, ``"swish_sign"``, ``"magnitude_aware_sign"``), a quantizer or
            a callable.
        kernel_constraint: as ``keras.layers.Conv2D``; also ``"weight_clip"``.
        **kwargs: any other ``BinaryConv2D`` / ``Conv2D`` argument.

    Example:
        >>> x = keras.Input((32, 32, 64))
        >>> y = QuantConv2D(64, 3, padding="same", pad_values=1.0,
        ...                 input_quantizer="ste_sign", kernel_quantizer="ste_sign",
        ...                 kernel_constraint="weight_clip", use_bias=False)(x)
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        pad_values=0.0,
        input_quantizer=None,
        kernel_quantizer=None,
        kernel_constraint=None,
        **kwargs,
    ):
        kwargs.setdefault("kernel_scale", None)
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            pad_values=pad_values,
            input_quantizer=input_quantizer,
            kernel_quantizer=kernel_quantizer,
            kernel_constraint=kernel_constraint,
            **kwargs,
        )


@register
class LearnableBias(keras.layers.Layer):
    """Adds a trainable per-channel bias (ReActNet's learnable threshold / RSign shift).

    Args:
        **kwargs: standard layer arguments (``name``, ``dtype``...).

    Example:
        >>> y = LearnableBias()(keras.ops.zeros((1, 4, 4, 8)))
    """

    def build(self, input_shape):
        self.bias = self.add_weight(
            shape=(input_shape[-1],), initializer="zeros", name="bias", trainable=True
        )

    def call(self, inputs):
        return inputs + self.bias

    def compute_output_shape(self, input_shape):
        return input_shape


@register
class RPReLU(keras.layers.Layer):
    """ReActNet's RPReLU: ``y = PReLU(x - gamma; beta) + zeta`` with per-channel parameters.

    Args:
        alpha_initializer: initial PReLU slope ``beta`` for negative inputs (default 0.25).
        **kwargs: standard layer arguments.

    Example:
        >>> y = RPReLU()(keras.ops.ones((1, 4, 4, 8)))
    """

    def __init__(self, alpha_initializer=0.25, **kwargs):
        super().__init__(**kwargs)
        self.alpha_initializer = float(alpha_initializer)

    def build(self, input_shape):
        channels = input_shape[-1]
        self.gamma = self.add_weight(shape=(channels,), initializer="zeros", name="gamma")
        self.alpha = self.add_weight(
            shape=(channels,),
            initializer=keras.initializers.Constant(self.alpha_initializer),
            name="alpha",
        )
        self.zeta = self.add_weight(shape=(channels,), initializer="zeros", name="zeta")

    def call(self, inputs):
        x = inputs - self.gamma
        # relu(x) + (-beta) relu(-x) equals where(x > 0, x, beta x) in value, and with beta
        # shaped (1, ..., 1, C) it is the form TensorFlow's converter fuses into one PRELU op
        # (and x - gamma into the binary conv before it); the where form stays five
        # elementwise ops between binary convs in the flatbuffer.
        neg_alpha = ops.reshape(-self.alpha, (1,) * (len(x.shape) - 2) + (-1,))
        return ops.relu(x) + neg_alpha * ops.relu(-x) + self.zeta

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "alpha_initializer": self.alpha_initializer}


__all__ = [
    "KERNEL_SCALES",
    "BinaryConv2D",
    "LearnableBias",
    "QuantConv2D",
    "RPReLU",
    "has_binary_kernel",
    "is_binary_conv",
    "same_paddings",
]
