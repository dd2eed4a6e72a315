"""Training helpers shared by progressive_fit, the baselines, the demo and the benchmarks:
the linear-decay Adam schedule, the task loss, accuracy and the full-precision trainer
(``recalibrate_batchnorm`` is ``bitat_keras.fit.batchnorm``'s, used here after training)."""

import keras
import numpy as np

from bitat_keras.fit import backend
from bitat_keras.fit.batchnorm import recalibrate_batchnorm

__all__ = [
    "accuracy",
    "compile_result",
    "linear_decay",
    "recalibrate_batchnorm",
    "task_loss",
    "train_full_precision",
]


def linear_decay(lr, steps):
    """Learning rate ``lr`` decayed linearly to 0 over ``steps`` optimizer steps."""
    return keras.optimizers.schedules.PolynomialDecay(
        lr, decay_steps=max(int(steps), 1), end_learning_rate=0.0, power=1.0
    )


def task_loss():
    """Sparse categorical cross-entropy on logits (the default task loss)."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def compile_result(model, loss=None):
    """Compile a returned model with ``loss`` (default: ``task_loss()``) and accuracy, so
    that ``evaluate`` works, and build its (unused) optimizer, so that a model saved from it
    loads without Keras' warning about skipped optimizer variables."""
    model.compile(loss=loss or task_loss(), metrics=["accuracy"])
    model.optimizer.build(model.trainable_variables)
    return model


def accuracy(model, x, y, batch_size=512):
    """Top-1 accuracy of a logits model on numpy data."""
    logits = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(y)))


def train_full_precision(model, train, epochs, batch_size, verbose=0, learning_rate=1e-3):
    """Adam with linear decay on the task loss, then BatchNorm statistics re-estimated.

    Args:
        model: the full-precision model (trained in place).
        train: ``(x, y)`` numpy arrays.
        epochs, batch_size, verbose, learning_rate: as in ``keras.Model.fit``.

    Returns:
        ``model``.
    """
    x, y = train
    steps = epochs * int(np.ceil(len(x) / batch_size))
    model.compile(
        keras.optimizers.Adam(linear_decay(learning_rate, steps)),
        task_loss(),
        metrics=["accuracy"],
        jit_compile=backend.jit_compile(),
    )
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=verbose)
    order = np.random.default_rng(0).permutation(len(x))[: 20 * batch_size]
    recalibrate_batchnorm(
        model, (x[order[i : i + batch_size]] for i in range(0, len(order), batch_size))
    )
    return model
