"""FlipRateLogger against an independent numpy record of the kernels."""

import keras
import numpy as np
import pytest
from keras import ops

import bitat_keras as bk


class KernelRecorder(keras.callbacks.Callback):
    """The oracle: every binary kernel as numpy at the start and after each epoch/batch."""

    def __init__(self, names, frequency):
        super().__init__()
        self.names, self.frequency, self.snapshots = names, frequency, []

    def _snap(self):
        self.snapshots.append(
            {n: ops.convert_to_numpy(self.model.get_layer(n).kernel).copy() for n in self.names}
        )

    def on_train_begin(self, logs=None):
        self._snap()

    def on_epoch_end(self, epoch, logs=None):
        if self.frequency == "epoch":
            self._snap()

    def on_train_batch_end(self, batch, logs=None):
        if self.frequency == "batch":
            self._snap()


@pytest.mark.parametrize("frequency", ["epoch", "batch"])
def test_flip_rates_equal_the_fraction_of_changed_signs(frequency):
    keras.utils.set_random_seed(0)
    x, y = bk.datasets.load("digits", "train")
    model = bk.models.reactnet_mobilenet(
        (8, 8, 1), num_classes=10, width_multiplier=0.25, blocks=[(64, 1)], binary=True
    )
    names = sorted(bk.callbacks.binary_layers(model))
    assert names == sorted(bk.models.eligible_layers(model)) and len(names) == 3
    model.compile(keras.optimizers.Adam(5e-2), bk.training.task_loss())
    logger = bk.callbacks.FlipRateLogger(frequency)
    recorder = KernelRecorder(names, frequency)  # runs after the logger: same kernels
    hist = model.fit(x[:128], y[:128], batch_size=32, epochs=2, callbacks=[logger, recorder],
                     verbose=0)  # fmt: skip
    snaps = recorder.snapshots
    assert len(logger.history) == len(snaps) - 1 == (2 if frequency == "epoch" else 8)
    for before, after, rates in zip(snaps[:-1], snaps[1:], logger.history, strict=True):
        for name in names:
            expected = np.mean((before[name] >= 0) != (after[name] >= 0))
            assert rates[name] == pytest.approx(expected, abs=0)
    assert any(r > 0 for rates in logger.history for r in rates.values())  # lr 5e-2 flips
    if frequency == "epoch":  # the rates reach History like any metric
        for name in names:
            logged = hist.history[f"flip_rate/{name}"]
            assert logged == [rates[name] for rates in logger.history]


def test_flip_rate_logger_refuses_an_unknown_frequency():
    with pytest.raises(ValueError, match="'epoch' or 'batch'. Received: frequency='step'"):
        bk.callbacks.FlipRateLogger("step")
