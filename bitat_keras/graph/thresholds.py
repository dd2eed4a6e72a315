"""Input thresholds for one-signed inputs (ReActNet's RSign shift: ``sign(x - t)``).

After a ReLU or ReLU6 every input value of a conv is >= 0, and ``sign`` (with sign(0) = +1)
maps every one of them to +1: the binarized conv then computes a constant. A per-channel
threshold ``t`` before the sign fixes this; it is initialised from the channel's values so
that the sign splits them as evenly as the values allow (about the median; for a ReLU
channel that is 0 more than half the time, just above 0, so that 0 maps to -1 and positive
values to +1: the sign of the pre-activation, BinaryNet's choice), then trained with the
layer.
"""

import keras
import numpy as np

from bitat_keras.graph.structure import check_model

__all__ = [
    "NO_DATA_THRESHOLD",
    "ONE_SIGNED_SHARE",
    "SignStats",
    "initial_thresholds",
    "input_batches",
    "set_thresholds",
]

# A channel is one-signed when fewer than 1 % of its values fall on one side of 0.
_CHANNEL_SPLIT = 0.01
# A layer needs thresholds when at least this share of its input channels is one-signed.
ONE_SIGNED_SHARE = 0.5
# Values closer than this (relative to the channel's largest magnitude) count as one value.
_DISTINCT = 1e-5
# The margin a repeated value keeps from a threshold (relative to the largest magnitude).
_MARGIN = 1e-3
# t of a threshold set without data (0 maps to -1, positive values to +1).
NO_DATA_THRESHOLD = 1e-3


class SignStats:
    """Running sign statistics of one layer's input, per channel.

    Attributes:
        count: values seen per channel.
        non_negative: values >= 0 per channel (what ``sign`` maps to +1).
        low, high: the smallest and largest value per channel.
    """

    def __init__(self, channels):
        self.count = 0
        self.non_negative = np.zeros(channels, np.int64)
        self.low = np.full(channels, np.inf)
        self.high = np.full(channels, -np.inf)

    def update(self, x):
        """Add a batch ``x`` of shape (..., channels)."""
        flat = np.asarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
        self.count += len(flat)
        self.non_negative += (flat >= 0).sum(axis=0)
        self.low = np.minimum(self.low, flat.min(axis=0))
        self.high = np.maximum(self.high, flat.max(axis=0))

    @property
    def positive_share(self):
        """The share of all values that ``sign`` maps to +1."""
        return float(self.non_negative.sum() / max(self.count * len(self.non_negative), 1))

    @property
    def one_signed(self):
        """Per channel: whether ``sign`` gives (almost) the same value everywhere."""
        share = self.non_negative / max(self.count, 1)
        return np.minimum(share, 1.0 - share) < _CHANNEL_SPLIT

    @property
    def constant(self):
        """Per channel: whether every value is the same (no threshold can split it)."""
        return self.high <= self.low

    @property
    def one_signed_share(self):
        """The share of channels whose sign is (almost) constant."""
        return float(self.one_signed.mean()) if len(self.one_signed) else 0.0

    @property
    def needs_threshold(self):
        return self.one_signed_share >= ONE_SIGNED_SHARE


def input_batches(model, layers, images, batch_size=64):
    """Yield, batch by batch, ``[input of layer for layer in layers]`` in inference mode
    (one forward pass of ``model`` per batch, lower layers in their current state)."""
    check_model(model)
    probe = keras.Model(model.inputs[0], [layer.input for layer in layers])
    for i in range(0, len(images), batch_size):
        outs = probe(images[i : i + batch_size], training=False)
        outs = outs if isinstance(outs, list | tuple) else [outs]
        yield [np.asarray(keras.ops.convert_to_numpy(o)) for o in outs]


def initial_thresholds(values):
    """Per-channel thresholds for input values of shape (..., channels): for each
    channel, a point in the gap between two distinct values that splits the values most
    evenly (just below the value of a constant channel, e.g. a dead ReLU). A value that
    repeats (a ReLU's zeros, the few levels a binary conv outputs) keeps a margin of
    ``_MARGIN`` times the channel's largest magnitude from the threshold, so float rounding
    cannot move it across, in Keras as in LCE."""
    flat = np.asarray(values, dtype=np.float32).reshape(-1, values.shape[-1])
    out = np.zeros(flat.shape[1], np.float32)
    for c in range(flat.shape[1]):
        v = np.sort(flat[:, c])
        scale = float(np.abs(v).max())
        cuts = np.flatnonzero(np.diff(v) > _DISTINCT * scale) + 1  # v[k-1] < v[k]
        if not len(cuts):  # constant: nothing to split; keep its one value clear of t
            out[c] = v[0] - _MARGIN * max(abs(float(v[0])), 1.0)
            continue
        k = cuts[np.argmin(np.abs(cuts - len(v) / 2))]
        low, high = float(v[k - 1]), float(v[k])
        t = (low + high) / 2
        margin = min(_MARGIN * scale, (high - low) / 2)
        if _repeats(v, low):
            t = max(t, low + margin)
        if _repeats(v, high):
            t = min(t, high - margin)
        out[c] = t
    return out


def _repeats(sorted_values, value):
    """Whether ``value`` is an atom: more than 1 % of the values equal it."""
    left = np.searchsorted(sorted_values, value, side="left")
    right = np.searchsorted(sorted_values, value, side="right")
    return right - left > 0.01 * len(sorted_values)


def set_thresholds(model, names, images, max_values=20000, seed=0):
    """Initialise the input thresholds of the ``BinaryConv2D`` layers ``names`` of
    ``model`` from ``images``, bottom to top, each from its input with the layers below in
    their current (binarized, thresholded) state.

    Args:
        model: the binary model.
        names: layers with ``input_threshold=True``, bottom to top.
        images: a sample of input images.
        max_values: values kept per channel (a seeded subsample).
        seed: seeds the subsample.

    Returns:
        ``{name: thresholds}`` (numpy arrays).
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name in names:
        layer = model.get_layer(name)
        values = np.concatenate([b[0] for b in input_batches(model, [layer], images)])
        flat = values.reshape(-1, values.shape[-1])
        if len(flat) > max_values:
            flat = flat[np.sort(rng.choice(len(flat), size=max_values, replace=False))]
        out[name] = initial_thresholds(flat)
        layer.threshold.assign(out[name])
    return out
