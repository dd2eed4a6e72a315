"""Weight constraints for latent (real-valued) binary weights."""

import keras
from keras import ops

from bitat_keras.nn.registry import register, resolve


@register
class WeightClip(keras.constraints.Constraint):
    """Clip latent weights to ``[-clip_value, clip_value]`` (larq's ``weight_clip``).

    Keeps latent weights inside the region where the STE passes gradients.

    Args:
        clip_value: positive bound.

    Example:
        >>> layer = keras.layers.Dense(4, kernel_constraint=WeightClip(1.0))
    """

    def __init__(self, clip_value=1.0):
        clip_value = float(clip_value)
        if not clip_value > 0:
            raise ValueError(f"`clip_value` must be > 0. Received: clip_value={clip_value}")
        self.clip_value = clip_value

    def __call__(self, w):
        return ops.clip(w, -self.clip_value, self.clip_value)

    def get_config(self):
        return {"clip_value": self.clip_value}


ALIASES = {"weight_clip": WeightClip}


def get(identifier):
    """Return a constraint from ``"weight_clip"``, a Keras constraint name, a config or callable."""
    if isinstance(identifier, str) and identifier not in ALIASES:
        try:
            return keras.constraints.get(identifier)
        except ValueError:
            pass
    return resolve(identifier, ALIASES, "constraint")


__all__ = ["ALIASES", "WeightClip", "get"]
