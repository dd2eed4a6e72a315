"""Models we did not pick: random small CNNs (tests/random_models.py) planned, binarized,
trained a few steps, converted to LCE and checked against the LCE interpreter.

Default suite: 25 seeded models; ``-m slow``: 300. Each model is checked on its untrained
weights and after a few training steps, on random inputs and on inputs with exactly repeated
values (a constant image, a few levels)."""

import keras
import numpy as np
import pytest
from random_models import describe, random_cnn

import bitat_keras as bk
from bitat_keras import export as ex
from bitat_keras.layers import BinaryConv2D

pytestmark = pytest.mark.skipif(
    keras.config.backend() != "tensorflow",
    reason="LCE conversion needs KERAS_BACKEND=tensorflow",
)

REL_TOL = 1e-4


def inputs(model, seed):
    """Random normal images, a constant one, one of four levels and one with zeros."""
    shape = tuple(model.inputs[0].shape[1:])
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, *shape)).astype("float32")
    x[1] = 0.5
    x[2] = np.round(x[2] * 1.5) / 1.5
    x[3] = np.where(np.abs(x[3]) < 0.7, 0.0, x[3])
    return x


def parity(model, x):
    flatbuffer = bk.convert_keras_model(model)
    ops = bk.inspect_tflite(flatbuffer)["ops"]
    binary = sum(
        isinstance(layer, BinaryConv2D) and layer.input_quantizer is not None
        for layer in model.layers
    )
    assert ops.get("LceBconv2d", 0) == binary, (ops, binary)
    diff = ex.verify_tflite(model, flatbuffer, x)
    scale = float(np.max(np.abs(keras.ops.convert_to_numpy(model(x, training=False)))))
    return diff / max(scale, 1e-6)


def check(seed):
    model = random_cnn(seed)
    x = inputs(model, seed)
    y = np.arange(len(x)) % 3
    plan = bk.plan(model, x)
    bnn = bk.binarize(model, x)
    assert len(plan.binarized) == sum(isinstance(layer, BinaryConv2D) for layer in bnn.layers)
    failures = []
    untrained = parity(bnn, x)
    if not untrained <= REL_TOL:
        failures.append(f"untrained: {untrained:.2e}")
    bnn.compile(keras.optimizers.Adam(1e-2), bk.training.task_loss())
    bnn.fit(x, y, epochs=3, batch_size=3, verbose=0)
    trained = parity(bnn, x)
    if not trained <= REL_TOL:
        failures.append(f"trained: {trained:.2e}")
    assert not failures, f"seed {seed}, {describe(model)}: {failures}"


@pytest.mark.parametrize("seed", range(25))
def test_random_model_converts_exactly(seed):
    check(seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(25, 325))
def test_random_model_converts_exactly_many(seed):
    check(seed)
