import keras
import numpy as np
import pytest

import bitat_keras as bk
from bitat_keras.nn.layers import BinaryConv2D

SMALL = dict(num_classes=10, width_multiplier=0.25)


def test_anchor_network_size_and_binary_layer_count():
    model = bk.models.reactnet_mobilenet(
        (28, 28, 1), num_classes=10, blocks=[(64, 1), (128, 2), (128, 1), (256, 2), (256, 1)]
    )
    assert 1.06e6 < model.count_params() < 1.08e6  # the anchor network: about 1.07 M params
    assert len(bk.models.eligible_layers(model)) == 13


@pytest.mark.parametrize("shape, stem_stride", [((32, 32, 3), 1), ((224, 224, 3), 2)])
def test_fp_twin_has_same_names_and_weight_layout(shape, stem_stride):
    fp = bk.models.reactnet_mobilenet(shape, **SMALL)
    bnn = bk.models.reactnet_mobilenet(shape, binary=True, **SMALL)
    assert [layer.name for layer in fp.layers] == [layer.name for layer in bnn.layers]
    assert [w.shape for w in fp.weights] == [w.shape for w in bnn.weights]
    assert fp.get_layer("stem_conv").strides == (stem_stride, stem_stride)
    n_binary = sum(isinstance(layer, BinaryConv2D) for layer in bnn.layers)
    assert n_binary == len(bk.models.eligible_layers(fp)) == 13 * 2 + 5  # 5 blocks double the width


def test_binarize_replaces_eligible_convs_and_copies_weights():
    fp = bk.models.reactnet_mobilenet((32, 32, 3), **SMALL)
    for w in fp.weights:
        w.assign(np.random.default_rng(0).normal(size=w.shape).astype("float32") * 0.1)
    bnn = bk.binarize(fp)
    assert isinstance(bnn.get_layer("block1_conv3x3"), BinaryConv2D)
    assert type(bnn.get_layer("stem_conv")) is keras.layers.Conv2D
    for a, b in zip(fp.weights, bnn.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    assert type(fp.get_layer("block1_conv3x3")) is keras.layers.Conv2D  # original untouched


def test_binarize_with_quantizers_off_is_the_fp_function():
    fp = bk.models.reactnet_mobilenet((16, 16, 3), num_classes=4, width_multiplier=0.25,
                                      blocks=[(64, 1), (128, 2)])  # fmt: skip
    bnn = bk.binarize(fp, input_quantizer=None, kernel_quantizer=None)
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(bnn.predict(x, verbose=0), fp.predict(x, verbose=0), atol=1e-5)


def test_sequential_binarize_and_head_conv_stays_float():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(8, 3, padding="same"),
            keras.layers.Conv2D(8, 3, padding="same"),
            keras.layers.DepthwiseConv2D(3, padding="same"),
            keras.layers.Conv2D(4, 1),
        ]
    )
    assert bk.models.eligible_layers(model) == [model.layers[1].name]
    bnn = bk.binarize(model)
    assert [type(layer).__name__ for layer in bnn.layers] == [
        "Conv2D", "BinaryConv2D", "DepthwiseConv2D", "Conv2D"
    ]  # fmt: skip


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="input_shape"):
        bk.models.reactnet_mobilenet((32, 32))
    with pytest.raises(ValueError, match="Block 1"):
        bk.models.reactnet_mobilenet((32, 32, 3), blocks=[(48, 1)])
    with pytest.raises(TypeError, match="keras.Model"):
        bk.binarize("model.keras")


def test_files_and_imports_from_the_flat_layout_still_work():
    """The package's floors keep 0.2's paths: its public modules import under their old
    names, and a .keras file saved then (its config names the module
    ``bitat_keras.layers``) loads with the same layers and weights."""
    import pathlib
    import zipfile

    from bitat_keras.layers import RPReLU  # 0.2: one flat package

    assert RPReLU is bk.layers.RPReLU is bk.nn.layers.RPReLU
    teacher = pathlib.Path(__file__).parents[1] / "benchmarks/results/teachers/lowdata_seed0.keras"
    with zipfile.ZipFile(teacher) as z:
        assert '"module": "bitat_keras.layers"' in z.read("config.json").decode()
    model = keras.saving.load_model(teacher)
    assert any(isinstance(layer, RPReLU) for layer in model.layers)
    assert np.isfinite(model.predict(np.zeros((1, *model.input_shape[1:])), verbose=0)).all()
