"""Seeded batches of numpy arrays: the order (and augmentation) of every pass drawn from a
seed, and their way into Keras' ``fit``."""

import itertools
import math

import keras
import numpy as np

from bitat_keras.fit import backend
from bitat_keras.fit.distill import targets
from bitat_keras.fit.multi_worker import batch_part

__all__ = ["SeededBatches", "fit_input", "shift_flip"]


def shift_flip(images, rng, shift, flip):
    """Numpy augmentation of a batch ``(N, H, W, C)``: each image zero-padded by ``shift``
    pixels and cropped back at a random offset (a shift of up to ``shift`` pixels each
    way), then, with ``flip``, mirrored left-right with probability 1/2; draws from ``rng``
    (a ``numpy.random.Generator``)."""
    n, h, w = images.shape[:3]
    out = images
    if shift:
        padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
        dy, dx = rng.integers(0, 2 * shift + 1, size=(2, n))
        rows = dy[:, None] + np.arange(h)  # (n, h)
        cols = dx[:, None] + np.arange(w)  # (n, w)
        out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if flip:
        mirror = rng.random(n) < 0.5
        out = np.where(mirror[:, None, None, None], out[:, :, ::-1], out)
    return out


class SeededBatches(keras.utils.PyDataset):
    """Shuffled batches of numpy arrays whose order depends on ``seed`` only.

    Reseeding TensorFlow's global generator before every phase (to make Keras' own shuffle
    reproducible) clears TensorFlow's kernel caches, which costs more than a second per
    phase; an order drawn from numpy with the phase's seed needs no global seed. The
    batches run through the data pass after pass (a new permutation each pass), so an
    "epoch" of ``steps`` batches may end inside a pass (fractional epochs).

    With ``augment`` every batch is augmented as it is drawn (``shift_flip``), from a
    generator seeded by ``seed``, the pass and the batch's place in it: numpy only, so it
    needs no TensorFlow (``bitat_keras.datasets.augmented_batches`` returns such batches
    where TensorFlow is missing). ``progressive_fit`` and the baselines take these
    batches as training data: every phase then draws its own order and augmentations.

    Under several JAX processes (``keras.distribution.initialize``) each process yields its
    own consecutive share of every batch, as Keras expects of a process's data.

    Args:
        x, y: the arrays.
        batch_size: samples per batch (the last batch of a pass may be smaller).
        seed: seeds the permutation of every pass (and the augmentation).
        steps: batches per Keras epoch (default: one pass).
        sample_weight: optional per-sample weights, yielded as each batch's third item.
        augment: ``(shift, flip)`` for ``shift_flip``, or None (no augmentation).
        teacher_logits: optional per-sample teacher logits (``distill.teacher_outputs``),
            yielded with the labels as each batch's targets (``distill.targets``).

    Example:
        >>> batches = SeededBatches(x, y, batch_size=128, seed=0, augment=(2, True))
        >>> model.fit(batches, epochs=30, shuffle=False)
    """

    def __init__(self, x, y, batch_size, seed, steps=None, sample_weight=None, augment=None,
                 teacher_logits=None):  # fmt: skip
        super().__init__()
        self.x, self.y, self.batch_size, self.seed = x, y, int(batch_size), int(seed)
        self.w = sample_weight
        self.teacher_logits = teacher_logits
        self.augment = None if augment is None else (int(augment[0]), bool(augment[1]))
        self.part = batch_part()
        self.per_pass = math.ceil(len(x) / self.batch_size)
        self.steps = int(steps) if steps else self.per_pass
        self.epoch = 0
        self._orders = {}

    def _order(self, p):
        if p not in self._orders:
            self._orders = {p: np.random.default_rng([self.seed, p]).permutation(len(self.x))}
        return self._orders[p]

    def __len__(self):
        return self.steps

    def __getitem__(self, index):
        return self.batch(index, self.epoch)

    def batch(self, index, epoch):
        """Batch ``index`` of Keras epoch ``epoch`` (what ``__getitem__`` gives in that epoch)."""
        p, j = divmod(epoch * self.steps + index, self.per_pass)
        rows = np.sort(self._order(p)[j * self.batch_size : (j + 1) * self.batch_size])
        x = self.x[rows]
        if self.augment is not None:  # the whole batch, so every process draws the same
            x = shift_flip(x, np.random.default_rng([self.seed, p, j]), *self.augment)
        share = slice(None)
        if self.part is not None:  # this process's share of the batch (keras.distribution)
            index, count = self.part
            share = slice(index * len(rows) // count, (index + 1) * len(rows) // count)
        y = self.y[rows][share]
        if self.teacher_logits is not None:
            y = targets(y, self.teacher_logits[rows][share])
        if self.w is not None:
            return x[share], y, self.w[rows][share]
        return x[share], y

    def on_epoch_end(self):
        self.epoch += 1


def fit_input(kwargs):
    """``fit`` arguments whose ``SeededBatches`` reach Keras as the batches Keras would draw
    from them (one ``on_epoch_end`` before the first pass, one after each), through
    ``backend.untuned_pipeline`` where that applies (TensorFlow: no wait for tf.data's
    autotuning thread when ``fit`` returns). The pipeline runs pass after pass through one
    iterator, ``steps_per_epoch`` batches per Keras epoch.

    Args:
        kwargs: the keyword arguments for ``fit``.

    Returns:
        The arguments, ``x`` replaced (and ``steps_per_epoch`` set) where that applies.

    Example:
        >>> model.fit(**fit_input(data.fit_kwargs(seed=0)), epochs=2)  # doctest: +SKIP
    """
    batches = kwargs.get("x")
    if not isinstance(batches, SeededBatches):
        return kwargs
    first = batches.epoch + 1  # Keras' fit calls on_epoch_end once before the first pass

    def passes():
        for epoch in itertools.count(first):
            for i in range(len(batches)):
                yield batches.batch(i, epoch)

    dataset = backend.untuned_pipeline(passes, batches.batch(0, first))
    if dataset is None:
        return kwargs
    return {**kwargs, "x": dataset, "steps_per_epoch": len(batches)}
