"""Sign-flip logging: how many binary weights change sign while a binary network trains."""

import keras
import numpy as np
from keras import ops

from bitat_keras.graph.structure import walk_layers
from bitat_keras.nn.layers import has_binary_kernel

__all__ = ["FlipRateLogger", "binary_layers", "flip_rate", "kernel_signs"]


def binary_layers(model):
    """The layers of ``model`` (nested models included) whose kernel is binarized
    (``layers.has_binary_kernel``: every ``BinaryConv2D`` with a kernel quantizer), by name."""
    return {layer.name: layer for layer in walk_layers(model) if has_binary_kernel(layer)}


def kernel_signs(layer):
    """The signs the layer's kernel quantizer gives its latent kernel (True: +1), as numpy:
    the +-1 part of ``layer.kernel_and_scale()``."""
    signs, _ = layer.kernel_and_scale()
    return ops.convert_to_numpy(signs) > 0


def flip_rate(before, after):
    """The fraction of signs that differ between two ``kernel_signs`` snapshots."""
    return float(np.mean(before != after))


class FlipRateLogger(keras.callbacks.Callback):
    """Logs, per binary layer, the fraction of kernel signs that changed since the last epoch
    (or batch), like larq's ``QuantizationLogger``.

    A rate that falls to 0 while the loss is still high means the layer's signs are frozen
    (its latent weights moved away from 0, or its gradient vanished); a rate that stays high
    means they oscillate (the learning rate is too large for the latent weights' scale). The
    rates go into the epoch logs as ``flip_rate/<layer>`` (so into ``History`` and any
    logger) and into ``self.history``, one dict per epoch or batch. Inside
    ``progressive_fit`` the callback sees the phase trainer; it measures the network
    (``model.student``).

    Args:
        frequency: "epoch" (default) or "batch".

    Example:
        >>> logger = FlipRateLogger()
        >>> model.fit(x, y, epochs=3, callbacks=[logger])  # doctest: +SKIP
        >>> logger.history[-1]  # {'block1_conv3x3': 0.004, ...}  # doctest: +SKIP
    """

    def __init__(self, frequency="epoch"):
        super().__init__()
        if frequency not in ("epoch", "batch"):
            raise ValueError(
                f"`frequency` must be 'epoch' or 'batch'. Received: frequency={frequency!r}"
            )
        self.frequency = frequency
        self.history = []
        self._layers = {}
        self._signs = {}

    def on_train_begin(self, logs=None):
        self._layers = binary_layers(getattr(self.model, "student", self.model))
        self._signs = {name: kernel_signs(layer) for name, layer in self._layers.items()}

    def _log(self, logs):
        rates = {}
        for name, layer in self._layers.items():
            signs = kernel_signs(layer)
            rates[name] = flip_rate(self._signs[name], signs)
            self._signs[name] = signs
        self.history.append(rates)
        if logs is not None:
            logs.update({f"flip_rate/{name}": rate for name, rate in rates.items()})

    def on_train_batch_end(self, batch, logs=None):
        if self.frequency == "batch":
            self._log(logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.frequency == "epoch":
            self._log(logs)
