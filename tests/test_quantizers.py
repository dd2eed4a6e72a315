import numpy as np
import pytest
from keras import ops

import bitat_keras as bk
from bitat_keras.fit import backend

GRID = np.array([-2.0, -1.5, -1.0, -0.75, -0.5, -1e-3, 0.0, 1e-3, 0.5, 0.75, 1.0, 1.5, 2.0])


def _forward_and_grad(quantizer, x, upstream):
    """Value and vector-Jacobian product of `quantizer` at `x`, on the active backend."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x, dtype="float32")
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = quantizer(xt)
            loss = tf.reduce_sum(y * upstream)
        return y.numpy(), tape.gradient(loss, xt).numpy()
    import jax

    def f(v):
        return (quantizer(v) * upstream).sum()

    y = quantizer(jax.numpy.asarray(x, dtype="float32"))
    return np.asarray(y), np.asarray(jax.grad(f)(jax.numpy.asarray(x, dtype="float32")))


def numpy_sign(x):
    return np.where(x >= 0, 1.0, -1.0)


@pytest.mark.parametrize(
    "quantizer, oracle_grad",
    [
        (bk.quantizers.SteSign(), lambda x: (np.abs(x) <= 1.0).astype(float)),
        (bk.quantizers.SteSign(clip_value=1.5), lambda x: (np.abs(x) <= 1.5).astype(float)),
        (bk.quantizers.ApproxSign(), lambda x: np.maximum(2 - 2 * np.abs(x), 0.0)),
    ],
)
def test_forward_and_backward_match_numpy_oracle(quantizer, oracle_grad):
    upstream = np.linspace(0.5, 2.0, GRID.size).astype("float32")
    y, g = _forward_and_grad(quantizer, GRID, upstream)
    np.testing.assert_array_equal(y, numpy_sign(GRID))
    np.testing.assert_allclose(g, upstream * oracle_grad(GRID), rtol=1e-6, atol=1e-7)


def test_sign_of_zero_is_plus_one_and_values_are_binary():
    y = ops.convert_to_numpy(bk.quantizers.ste_sign(ops.zeros((3,))))
    np.testing.assert_array_equal(y, [1.0, 1.0, 1.0])


@pytest.mark.parametrize("name, cls", [("ste_sign", "SteSign"), ("approx_sign", "ApproxSign")])
def test_aliases_and_config_round_trip(name, cls):
    q = bk.quantizers.get(name)
    assert type(q).__name__ == cls
    import keras

    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(q))
    assert type(restored) is type(q)
    assert restored.get_config() == q.get_config()


def test_unknown_quantizer_name_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown quantizer 'sign_ste'.*approx_sign"):
        bk.quantizers.get("sign_ste")
    with pytest.raises(TypeError, match="Could not interpret quantizer"):
        bk.quantizers.get(3)


def test_bad_clip_values_are_rejected():
    with pytest.raises(ValueError, match="clip_value"):
        bk.quantizers.SteSign(clip_value=0)
    with pytest.raises(ValueError, match="clip_value"):
        bk.constraints.WeightClip(clip_value=-1)


def test_weight_clip_matches_numpy():
    w = np.linspace(-3, 3, 13).astype("float32")
    c = bk.constraints.get("weight_clip")
    np.testing.assert_array_equal(ops.convert_to_numpy(c(w)), np.clip(w, -1, 1))


def test_eager_gradient_through_keras_variables_equals_the_traced_one():
    """An eager tape through the quantizers and a BinaryConv2D whose weights are Keras
    variables (under TensorFlow, tf.custom_gradient sees a variable read inside it), then
    fit(run_eagerly=True) and a hand-written loop."""
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(0)
    kernel = keras.Variable(rng.normal(size=(3, 3, 2, 4)).astype("float32") * 0.5)
    weights = ops.convert_to_tensor(np.arange(72.0, dtype="float32").reshape(3, 3, 2, 4))

    def loss():
        return ops.sum(bk.quantizers.SteSign()(kernel) * weights)

    eager = backend.gradient(loss, kernel)
    traced = tf.function(lambda: tf.gradients(loss(), kernel.value)[0])().numpy()
    np.testing.assert_array_equal(eager, traced)
    expected = np.arange(72.0).reshape(3, 3, 2, 4) * (np.abs(kernel.numpy()) <= 1.0)
    np.testing.assert_allclose(eager, expected)

    model = bk.binarize(
        bk.models.reactnet_mobilenet(
            (8, 8, 1), num_classes=3, width_multiplier=0.25, blocks=[(64, 1)]
        )  # fmt: skip
    )
    x = rng.normal(size=(16, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 3, size=16)
    layer = model.get_layer("block1_conv3x3")
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        value = loss_fn(y, model(x, training=True))
    grad = tape.gradient(value, layer.kernel.value)
    assert grad is not None and np.abs(grad.numpy()).sum() > 0
    before = layer.kernel.numpy().copy()
    model.compile("adam", loss_fn, run_eagerly=True)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    optimizer = keras.optimizers.Adam(1e-2)
    for _ in range(2):  # a hand-written training loop
        with tf.GradientTape() as tape:
            value = loss_fn(y, model(x, training=True))
        grads = tape.gradient(value, model.trainable_weights)
        optimizer.apply(grads, model.trainable_weights)
    assert np.abs(layer.kernel.numpy() - before).max() > 0


def test_tensor_sign_and_numpy_sign_are_one_rule():
    """``quantizers.sign`` (tensors) and ``quantizers.numpy_sign`` (numpy) both map x >= 0
    (0 and -0 included) to +1 and the rest to -1, as every quantizer's forward does."""
    x = np.concatenate([GRID, [0.0, -0.0, 1e-30, -1e-30, np.inf, -np.inf]]).astype("float32")
    tensor = ops.convert_to_numpy(bk.quantizers.sign(ops.convert_to_tensor(x)))
    np.testing.assert_array_equal(tensor, bk.quantizers.numpy_sign(x))
    np.testing.assert_array_equal(bk.quantizers.numpy_sign(x), numpy_sign(x))
    np.testing.assert_array_equal(ops.convert_to_numpy(bk.quantizers.ste_sign(x)), tensor)
