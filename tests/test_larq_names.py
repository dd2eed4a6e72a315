"""larq's names on Keras 3: the quantizer aliases against numpy oracles, QuantConv2D's
defaults, serialization and strict LCE conversion."""

import keras
import numpy as np
import pytest
from test_quantizers import GRID, _forward_and_grad, numpy_sign

import bitat_keras as bk


def swish_sign_smooth(x, beta=5.0):
    """SignSwish, the smooth function whose derivative swish_sign's gradient is."""
    sig = 1.0 / (1.0 + np.exp(-beta * x))
    return 2.0 * sig * (1.0 + beta * x * (1.0 - sig)) - 1.0


def central_difference(f, x, h=1e-5):
    return (f(x + h) - f(x - h)) / (2 * h)


@pytest.mark.parametrize(
    "alias, oracle_grad",
    [
        ("ste_sign", lambda x: (np.abs(x) <= 1.0).astype(float)),
        ("approx_sign", lambda x: np.maximum(2.0 - 2.0 * np.abs(x), 0.0)),
        ("swish_sign", lambda x: central_difference(swish_sign_smooth, x)),
    ],
)
def test_sign_aliases_forward_and_gradient_match_numpy(alias, oracle_grad):
    quantizer = bk.quantizers.get(alias)
    upstream = np.linspace(0.5, 1.5, GRID.size).astype("float32")
    y, grad = _forward_and_grad(quantizer, GRID, upstream)
    np.testing.assert_array_equal(y, numpy_sign(GRID))
    np.testing.assert_allclose(grad, upstream * oracle_grad(GRID), rtol=1e-4, atol=1e-5)


def test_magnitude_aware_sign_scales_each_output_channel_by_its_mean_magnitude():
    rng = np.random.default_rng(0)
    w = rng.normal(scale=0.8, size=(3, 3, 4, 5)).astype("float32")
    upstream = rng.normal(size=w.shape).astype("float32")
    y, grad = _forward_and_grad(bk.quantizers.get("magnitude_aware_sign"), w, upstream)
    alpha = np.abs(w).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(y, alpha * numpy_sign(w), rtol=1e-6)
    # The scale carries no gradient: d/dw = alpha[o] * clipped straight-through estimator.
    np.testing.assert_allclose(grad, upstream * alpha * (np.abs(w) <= 1.0), rtol=1e-5, atol=1e-6)


def test_quant_conv2d_has_larq_defaults_and_is_a_plain_conv_without_quantizers():
    layer = bk.layers.QuantConv2D(6, 3)
    assert layer.padding == "valid" and layer.pad_values == 0.0
    assert layer.input_quantizer is None and layer.kernel_quantizer is None
    assert layer.kernel_scale is None
    x = np.random.default_rng(1).normal(size=(2, 7, 7, 3)).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x))
    conv = keras.layers.Conv2D(6, 3)
    conv.build(x.shape)
    conv.set_weights(layer.get_weights())
    np.testing.assert_allclose(y, keras.ops.convert_to_numpy(conv(x)), rtol=1e-5, atol=1e-5)


def larq_style_model():
    """A model written the larq way, with larq's names."""
    kwargs = dict(input_quantizer="ste_sign", kernel_constraint="weight_clip", use_bias=False)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(32, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = bk.layers.QuantConv2D(32, 3, padding="same", pad_values=1.0,
                              kernel_quantizer="magnitude_aware_sign", **kwargs)(x)  # fmt: skip
    x = keras.layers.BatchNormalization()(x)
    x = bk.layers.QuantConv2D(
        32, 3, kernel_quantizer="ste_sign", **{**kwargs, "input_quantizer": "swish_sign"}
    )(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    # Random BatchNorm offsets, as after training: at initialisation a binary conv's integer
    # sums hit exact ties at 0, where Keras and LCE may round to different signs.
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([1 + 0.1 * rng.random(n), 0.1 * rng.normal(size=n),
                               0.1 * rng.normal(size=n), 1 + 0.1 * rng.random(n)])  # fmt: skip
    return model


def test_larq_style_model_round_trips_and_converts_strictly(tmp_path):
    keras.utils.set_random_seed(0)
    model = larq_style_model()
    path = tmp_path / "larq_style.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    quant = [layer for layer in loaded.layers if isinstance(layer, bk.layers.QuantConv2D)]
    assert [type(q.input_quantizer).__name__ for q in quant] == ["SteSign", "SwishSign"]
    assert type(quant[0].kernel_quantizer).__name__ == "MagnitudeAwareSign"
    x = np.random.default_rng(2).normal(size=(4, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    flatbuffer = bk.convert_keras_model(model)  # strict: raises if a layer stayed float
    assert bk.inspect_tflite(flatbuffer)["ops"].get("LceBconv2d") == 2
    assert bk.verify_tflite(model, flatbuffer, x) < 1e-3
