"""Sign quantizers with straight-through estimators (STE).

Forward pass of every quantizer here is exactly ``where(x >= 0, 1.0, -1.0)``: that pattern,
wrapped in ``keras.ops.custom_gradient``, is what larq-compute-engine recognises as an input
binarizer (a ``stop_gradient`` STE or a plain ``sign`` stays float after conversion).
"""

import keras
import numpy as np
from keras import ops

from bitat_keras.nn.registry import register, resolve, serialize


def sign(x):
    """The binarization Q of the whole package: ``where(x >= 0, 1, -1)``, i.e. sign with
    sign(0) = +1, for tensors and without a gradient rule of its own (every quantizer here
    wraps it in its straight-through estimator).

    Written as ``sign(sign(x) + 0.1)``: equal for every finite x, recognised by LCE as an
    input binarizer, and constant-folded by TensorFlow for kernels of any size (a ``where``
    on a kernel above 2**18 elements is not folded and the conv stays float).

    Example:
        >>> keras.ops.convert_to_numpy(sign(keras.ops.convert_to_tensor([-0.5, 0.0, 2.0])))
        array([-1.,  1.,  1.], dtype=float32)
    """
    return ops.sign(ops.sign(x) + 0.1)


def numpy_sign(x):
    """``sign`` for numpy arrays, the same rule: ``where(x >= 0, 1.0, -1.0)`` (float64;
    0 counts as +1). For statistics and analyses computed outside the graph.

    Example:
        >>> numpy_sign(np.array([-0.5, 0.0, 2.0]))
        array([-1.,  1.,  1.])
    """
    return np.where(np.asarray(x) >= 0, 1.0, -1.0)


def _with_gradient(x, grad_fn):
    """Return sign(x) whose gradient is `upstream * grad_fn(x)`."""
    if isinstance(x, keras.Variable):
        # Read the variable outside the custom gradient: under TensorFlow an eager
        # custom_gradient that reads a variable inside expects the gradient function to
        # return (input_grads, variable_grads) too.
        x = ops.copy(x)
    else:
        x = ops.convert_to_tensor(x)

    @ops.custom_gradient
    def _quantize(x):
        def grad(*args, upstream=None, variables=None):
            # Keras calls grad(upstream) under JAX and grad(upstream, variables=...) under TF.
            if upstream is None:
                (upstream,) = args
            return upstream * grad_fn(x)

        return sign(x), grad

    return _quantize(x)


def channel_scale(w):
    """alpha[o] = mean(|w|) over every axis but the last (output channels), without
    gradient: the per-channel scale of a binary kernel (XNOR-Net, ReActNet, larq's
    ``magnitude_aware_sign``)."""
    w = ops.convert_to_tensor(w)
    return ops.stop_gradient(ops.mean(ops.abs(w), axis=tuple(range(len(w.shape) - 1))))


def kernel_and_scale(w, quantizer, kernel_scale="per_channel"):
    """A kernel binarized as a binary conv uses it: ``(signs, scale)`` with ``signs`` the
    quantizer's +-1 part (its straight-through gradient included) and ``scale`` the
    per-output-channel scale, or None. The quantizer's own scale (``sign_and_scale``, e.g.
    ``MagnitudeAwareSign``) is used if it has one, else ``channel_scale(w)`` with
    ``kernel_scale="per_channel"`` (never both: a scale is not applied twice); no quantizer
    gives ``(w, None)``, a real kernel. The binary kernel is ``signs * scale``.

    Example:
        >>> signs, scale = kernel_and_scale(keras.ops.ones((3, 3, 8, 16)), SteSign())
    """
    if quantizer is None:
        return w, None
    split = getattr(quantizer, "sign_and_scale", None)
    signs, scale = split(w) if split else (quantizer(w), None)
    if scale is None and kernel_scale == "per_channel":
        scale = channel_scale(w)
    return signs, scale


class Quantizer:
    """Base class: a serializable callable mapping real values to {-1, +1}."""

    def __call__(self, x):
        raise NotImplementedError

    def sign_and_scale(self, x):
        """``(signs, scale)`` with ``self(x) == signs * scale``: the +-1 part and the
        per-output-channel scale (None when the quantizer has none). A binary conv
        convolves with ``signs`` and scales its output, so its sums stay exact integers."""
        return self(x), None

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@register
class SteSign(Quantizer):
    """Sign with the clipped straight-through estimator (larq's ``ste_sign``).

    Forward: ``where(x >= 0, 1, -1)``. Backward: ``upstream * (|x| <= clip_value)``.

    Args:
        clip_value: gradients are zero where ``|x| > clip_value``. Must be positive.

    Example:
        >>> q = SteSign()
        >>> keras.ops.convert_to_numpy(q(keras.ops.convert_to_tensor([-0.5, 0.0, 2.0])))
        array([-1.,  1.,  1.], dtype=float32)
    """

    def __init__(self, clip_value=1.0):
        clip_value = float(clip_value)
        if not clip_value > 0:
            raise ValueError(f"`clip_value` must be > 0. Received: clip_value={clip_value}")
        self.clip_value = clip_value

    def __call__(self, x):
        clip = self.clip_value
        return _with_gradient(x, lambda x: ops.cast(ops.abs(x) <= clip, x.dtype))

    def get_config(self):
        return {"clip_value": self.clip_value}


@register
class ApproxSign(Quantizer):
    """Sign with ReActNet's / Bi-Real Net's piecewise-polynomial derivative.

    Forward: ``where(x >= 0, 1, -1)``. Backward: ``upstream * (2 - 2|x|)`` for ``|x| <= 1``,
    else 0 (the derivative of the piecewise quadratic approximation of sign).

    Example:
        >>> q = ApproxSign()
        >>> y = q(keras.ops.ones((2, 2)))
    """

    def __call__(self, x):
        return _with_gradient(x, lambda x: ops.maximum(2.0 - 2.0 * ops.abs(x), 0.0))


@register
class SwishSign(Quantizer):
    """Sign with the derivative of the SignSwish function (larq's ``swish_sign``; BNN+,
    Darabi et al.).

    Forward: ``where(x >= 0, 1, -1)``. Backward: ``upstream * d/dx SS(x)`` with
    ``SS(x) = 2 sigmoid(beta x) (1 + beta x (1 - sigmoid(beta x))) - 1``, a smooth
    approximation of sign whose derivative is ``beta (2 - beta x tanh(beta x / 2)) /
    (1 + cosh(beta x))``.

    Args:
        beta: sharpness of the approximation (larq's default 5.0). Must be positive.

    Example:
        >>> q = SwishSign(beta=5.0)
        >>> y = q(keras.ops.ones((2, 2)))
    """

    def __init__(self, beta=5.0):
        beta = float(beta)
        if not beta > 0:
            raise ValueError(f"`beta` must be > 0. Received: beta={beta}")
        self.beta = beta

    def __call__(self, x):
        beta = self.beta

        def derivative(x):
            bx = beta * x
            return beta * (2.0 - bx * ops.tanh(bx / 2.0)) / (1.0 + ops.cosh(bx))

        return _with_gradient(x, derivative)

    def get_config(self):
        return {"beta": self.beta}


@register
class MagnitudeAwareSign(Quantizer):
    """A kernel quantizer: per-output-channel ``mean(|w|) * sign(w)`` (larq's
    ``magnitude_aware_sign``; Bi-Real Net).

    Forward: ``alpha[o] * where(w >= 0, 1, -1)`` with ``alpha[o]`` the mean of ``|w|`` over
    every axis but the last. Backward: ``upstream * alpha[o] * (|w| <= clip_value)`` (the
    scale carries no gradient). For a ``BinaryConv2D`` this is what
    ``kernel_quantizer="ste_sign", kernel_scale="per_channel"`` computes.

    Args:
        clip_value: gradients are zero where ``|w| > clip_value``. Must be positive.

    Example:
        >>> q = MagnitudeAwareSign()
        >>> w = q(keras.ops.ones((3, 3, 8, 16)))
    """

    def __init__(self, clip_value=1.0):
        self._ste = SteSign(clip_value)
        self.clip_value = self._ste.clip_value

    def __call__(self, x):
        signs, scale = self.sign_and_scale(x)
        return signs * scale

    def sign_and_scale(self, x):
        return self._ste(x), channel_scale(x)

    def get_config(self):
        return {"clip_value": self.clip_value}


# The names larq users type; each forward and gradient is tested against a numpy oracle.
ALIASES = {
    "ste_sign": SteSign,
    "approx_sign": ApproxSign,
    "swish_sign": SwishSign,
    "magnitude_aware_sign": MagnitudeAwareSign,
}


def get(identifier):
    """Return a quantizer from an alias (``"ste_sign"``, ``"approx_sign"``, ``"swish_sign"``,
    ``"magnitude_aware_sign"``), a config dict or a callable."""
    return resolve(identifier, ALIASES, "quantizer")


def ste_sign(x, clip_value=1.0):
    """Functional form of :class:`SteSign`."""
    return SteSign(clip_value)(x)


def approx_sign(x):
    """Functional form of :class:`ApproxSign`."""
    return ApproxSign()(x)


def swish_sign(x, beta=5.0):
    """Functional form of :class:`SwishSign`."""
    return SwishSign(beta)(x)


def magnitude_aware_sign(x, clip_value=1.0):
    """Functional form of :class:`MagnitudeAwareSign`."""
    return MagnitudeAwareSign(clip_value)(x)


__all__ = [
    "ALIASES",
    "ApproxSign",
    "MagnitudeAwareSign",
    "Quantizer",
    "SteSign",
    "SwishSign",
    "approx_sign",
    "channel_scale",
    "get",
    "kernel_and_scale",
    "magnitude_aware_sign",
    "numpy_sign",
    "serialize",
    "sign",
    "ste_sign",
    "swish_sign",
]
