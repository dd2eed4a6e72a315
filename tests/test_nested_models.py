"""Models that nest other models (Keras' transfer-learning pattern) are planned, binarized,
trained and converted as one flat model; subclassed models get an error naming the reason."""

import keras
import numpy as np
import pytest

import bitat_keras as bk
from bitat_keras.graph.structure import flatten_model
from bitat_keras.nn.layers import BinaryConv2D

FAST = dict(
    epochs_per_layer=1, final_epochs=0, batch_size=16, stats_images=32, stats_rows=256,
    bn_recalibration_batches=2, groups=4,
)  # fmt: skip


def transfer_model():
    """``Sequential([MobileNetV2 base, pooling, Dense])`` as Keras' fine-tuning guides
    build it."""
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2((32, 32, 3), alpha=0.35, include_top=False, weights=None)
    return keras.Sequential(
        [base, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)], name="transfer"
    )


def nested_twice():
    """A functional model holding a Sequential that holds a functional model, with a layer
    name that clashes between levels."""
    keras.utils.set_random_seed(1)
    inner_in = keras.Input((8, 8, 8))
    y = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inner_in)
    y = keras.layers.BatchNormalization()(y)
    inner = keras.Model(inner_in, keras.layers.Add()([inner_in, y]), name="inner")
    middle = keras.Sequential(
        [keras.Input((8, 8, 8)), inner, keras.layers.Conv2D(8, 1, name="mid_conv")],
        name="middle",
    )
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)  # clashes
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem2")(x)
    x = middle(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x), name="outer")


def images(shape, n=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype("float32")


@pytest.mark.parametrize("build", [transfer_model, nested_twice], ids=["transfer", "twice"])
def test_flatten_keeps_every_weight_and_the_function(build):
    model = build()
    flat = flatten_model(model)
    x = images(model.inputs[0].shape[1:])
    assert not any(isinstance(layer, keras.Model) for layer in flat.layers)
    assert len({layer.name for layer in flat.layers}) == len(flat.layers)
    assert sum(w.size for w in flat.get_weights()) == sum(w.size for w in model.get_weights())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(flat(x, training=False)),
        keras.ops.convert_to_numpy(model(x, training=False)),
        rtol=1e-5,
        atol=1e-5,
    )
    assert flatten_model(flat) is flat  # nothing nested: the model itself


def test_transfer_pattern_is_planned_binarized_and_converted_through_the_base():
    model = transfer_model()
    x = images((32, 32, 3))
    plan = bk.plan(model, x)
    inner_convs = [
        layer.name
        for layer in model.layers[0].layers
        if type(layer) is keras.layers.Conv2D and layer.kernel_size == (1, 1)
    ]
    assert set(plan.binarized) <= set(inner_convs) and len(plan.binarized) >= 10
    assert any("nests the sub-model(s) 'mobilenetv2" in w for w in plan.warnings)
    with pytest.warns(UserWarning, match="nests the sub-model"):  # binarize's own plan
        bnn = bk.binarize(model, x)
    assert sum(isinstance(layer, BinaryConv2D) for layer in bnn.layers) == len(plan.binarized)
    if keras.backend.backend() == "tensorflow":
        flatbuffer = bk.convert_keras_model(bnn)
        assert bk.inspect_tflite(flatbuffer)["ops"]["LceBconv2d"] == len(plan.binarized)


def test_progressive_fit_trains_a_nested_model_as_flat():
    model = nested_twice()
    x = images((8, 8, 1), n=64)
    y = np.arange(64) % 3
    result = bk.progressive_fit(model, (x, y), config=bk.BiTATConfig(**FAST), verbose=0)
    assert [h["layer"] for h in result.history] == ["stem2", "inner_conv", "mid_conv"]
    assert any("nests the sub-model(s) 'middle'" in w for w in result.plan.warnings)
    assert not any(isinstance(layer, keras.Model) for layer in result.model.layers)
    assert model.get_layer("middle").layers[0].name == "inner"  # the user's model unchanged


def test_subclassed_model_gets_the_real_reason():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.a = keras.layers.Conv2D(4, 3)
            self.b = keras.layers.Conv2D(4, 3)
            self.head = keras.layers.Dense(3)

        def call(self, x):
            return self.head(keras.ops.mean(self.b(self.a(x)), axis=(1, 2)))

    net = Net()
    net(images((8, 8, 1)))  # built and callable
    data = (images((8, 8, 1)), np.zeros(8))
    for call in (
        lambda: bk.progressive_fit(net, data, verbose=0),
        lambda: bk.plan(net),
        lambda: bk.binarize(net),
    ):
        with pytest.raises(ValueError, match=r"subclassed keras.Model \(Net\).*functional"):
            call()
