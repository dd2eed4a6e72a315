"""progressive_fit (Algorithm 1) on tiny models: freezing, exact binary kernels, BatchNorm,
callbacks, errors."""

import json

import keras
import numpy as np
import pytest
from keras import ops

import bitat_keras as bk
from bitat_keras.nn.layers import BinaryConv2D

FAST = dict(
    epochs_per_layer=1,
    finetune_epochs=1,
    batch_size=32,
    groups=8,
    stats_images=32,
    stats_rows=512,
    bn_recalibration_batches=4,
    final_epochs=0,  # the paper's Algorithm 1 ends with the last layer (test_phases: final)
)


@pytest.fixture(scope="module")
def digits():
    x, y = bk.datasets.load("digits", "train")
    return x[:256], y[:256]


def tiny_model(num_classes=10):
    model = bk.models.reactnet_mobilenet(
        (8, 8, 1), num_classes=num_classes, width_multiplier=0.25, blocks=[(64, 1), (64, 1)]
    )
    return model


class PhaseRecorder(keras.callbacks.Callback):
    """Records the usual Keras events and each phase's first layer's effective kernel."""

    def __init__(self):
        super().__init__()
        self.events = []
        self.kernels = []

    def on_train_begin(self, logs=None):
        self.events.append("train_begin")
        net = getattr(self.model, "student", self.model)  # phases wrap the network
        layer = net.get_layer("block1_conv3x3")
        self.kernels.append(ops.convert_to_numpy(layer.quantized_kernel()))

    def on_epoch_end(self, epoch, logs=None):
        self.events.append("epoch_end")

    def on_train_batch_end(self, batch, logs=None):
        if "batch" not in self.events[-1:]:
            self.events.append("batch")


@pytest.fixture(scope="module")
def fitted(digits):
    """One progressive_fit run shared by the tests below (5 layers, 2 blocks)."""
    keras.utils.set_random_seed(0)
    recorder = PhaseRecorder()
    fp = tiny_model()
    result = bk.progressive_fit(
        fp, digits, config=bk.BiTATConfig(**FAST), callbacks=[recorder], verbose=0
    )
    return fp, result, recorder


def test_effective_kernels_are_exact_and_early_layers_stay_bit_identical(fitted):
    fp, result, recorder = fitted
    names = bk.models.eligible_layers(fp)
    assert len(names) == 5
    for name in names:
        layer = result.model.get_layer(name)
        assert isinstance(layer, BinaryConv2D) and layer.input_quantizer is not None
        k = ops.convert_to_numpy(layer.quantized_kernel())
        w = ops.convert_to_numpy(layer.kernel)
        np.testing.assert_array_equal(np.sign(k), np.where(w >= 0, 1.0, -1.0))
        for o in range(k.shape[-1]):  # exactly one magnitude per output channel: +-alpha[o]
            assert np.unique(np.abs(k[..., o])).size == 1
        np.testing.assert_allclose(np.abs(k).max((0, 1, 2)), np.abs(w).mean((0, 1, 2)), rtol=1e-6)
        assert not layer.trainable
    # Every phase after the first layer's quantization saw the same bits; so does the end.
    after_first = recorder.kernels[1]
    assert np.abs(after_first - recorder.kernels[0]).max() > 0  # it did train
    for k in recorder.kernels[2:]:
        np.testing.assert_array_equal(k, after_first)
    final = ops.convert_to_numpy(result.model.get_layer("block1_conv3x3").quantized_kernel())
    np.testing.assert_array_equal(final, after_first)
    # The stem conv and the classifier stay full precision.
    assert type(result.model.get_layer("stem_conv")) is keras.layers.Conv2D
    assert type(result.model.get_layer("classifier")) is keras.layers.Dense


def test_history_and_callbacks_cover_every_phase(fitted):
    _, result, recorder = fitted
    # Quantize + fine-tune for each layer but the top one (nothing above it to fine-tune).
    assert [h["phase"] for h in result.history] == ["quantize", "finetune"] * 4 + ["quantize"]
    assert [h["layer"] for h in result.history][::2] == bk.models.eligible_layers(result.model)
    for h in result.history:
        assert h["epochs"] == 1 and len(h["loss"]) == 1 and h["seconds"][h["phase"]] > 0
    assert recorder.events.count("train_begin") == 9
    assert "batch" in recorder.events and "epoch_end" in recorder.events
    # The seconds by kind of work are the history's sums; overhead is the rest of the wall
    # time plus tracing.
    kinds = result.seconds_by_kind()
    quantize = sum(h["seconds"].get("quantize", 0.0) for h in result.history)
    compile_s = sum(h.get("compile_seconds", 0.0) for h in result.history)
    train = quantize + sum(h["seconds"].get("finetune", 0.0) for h in result.history)
    assert kinds["quantize"] == pytest.approx(quantize)
    assert kinds["overhead"] == pytest.approx(result.seconds - train + compile_s)
    assert 0 < kinds["overhead_share"] < 1
    # Every second is some kind's: the record kinds and "other" (building the gated
    # network, checkpoints, the returned model) add up to the wall time.
    named = {k: v for k, v in kinds.items() if k not in ("compile", "overhead", "overhead_share")}
    assert {"statistics", "diagnostics", "batchnorm", "other"} <= set(named)
    assert sum(named.values()) == pytest.approx(result.seconds)
    assert 0 <= kinds["other"] < 0.5 * kinds["overhead"]
    # Without validation data, thresholds or checkpoints nothing reads inference mode
    # between the phases (the statistics run in training mode): BatchNorm is re-estimated
    # once, for the returned model.
    assert [h.bn_batches is not None for h in result.history] == [False] * 8 + [True]
    # Typed records that read as mappings too, and round-trip through JSON (checkpoints).
    first = result.history[0]
    assert isinstance(first, bk.PhaseRecord) and first.phase == first["phase"] == "quantize"
    assert first.training_seconds == first.seconds["quantize"]
    assert "val_accuracy" not in first and first.val_accuracy is None  # no validation data
    with pytest.raises(KeyError):
        first["val_accuracy"]
    again = [bk.PhaseRecord.from_dict(json.loads(json.dumps(dict(r)))) for r in result.history]
    assert again == result.history
    per_layer = result.seconds_by_layer()
    assert list(per_layer) == bk.models.eligible_layers(result.model)
    assert sum(per_layer.values()) == pytest.approx(
        sum(sum(h["seconds"].values()) for h in result.history)
    )


def test_blocks_expand_s_and_v_across_layers(fitted):
    _, result, _ = fitted
    blocks = [t["layers"] for t in result.transforms]
    assert blocks == [
        ["block1_conv3x3", "block1_conv1x1_a", "block1_conv1x1_b"],
        ["block2_conv3x3", "block2_conv1x1"],
    ]
    first = result.transforms[0]
    k = sum(first["ks"])
    assert first["s"].shape == (k,) and first["v"].shape == (k, k)
    assert first["ks"][0] == 8  # 3x3x8 = 72 input dims aggregated into k=8 groups
    # Off-diagonal blocks were trained away from their zero init.
    assert np.abs(first["v"][first["ks"][0] :, : first["ks"][0]]).max() > 0
    assert 0 < result.v_parameters["used"] < result.v_parameters["full"]


def test_intra_ablation_keeps_one_transform_per_layer(digits):
    model = bk.models.reactnet_mobilenet(
        (8, 8, 1), num_classes=10, width_multiplier=0.25, blocks=[(64, 1)]
    )
    config = bk.BiTATConfig(**{**FAST, "transform": "intra", "finetune_epochs": 0})
    result = bk.progressive_fit(model, digits, config=config, verbose=0)
    assert [t["layers"] for t in result.transforms] == [
        ["block1_conv3x3"],
        ["block1_conv1x1_a"],
        ["block1_conv1x1_b"],
    ]
    assert [h["phase"] for h in result.history] == ["quantize"] * 3


def test_batchnorm_recalibration_makes_inference_track_training_mode():
    x, y = bk.datasets.load("digits", "train")
    model = tiny_model()
    for layer in model.layers:  # Keras' default momentum (reactnet_mobilenet's follows faster)
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.99
    model.compile(
        keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x, y, epochs=6, batch_size=64, verbose=0)  # ~130 steps: moving stats lag behind

    def acc(training):
        logits = ops.convert_to_numpy(model(x, training=training))
        return float(np.mean(np.argmax(logits, 1) == y))

    train_mode = acc(True)
    before = acc(False)
    bk.training.recalibrate_batchnorm(model, [x[i : i + 128] for i in range(0, 1280, 128)])
    after = acc(False)
    assert train_mode > 0.8
    assert before < train_mode - 0.1  # moving statistics lag behind short runs
    assert after > train_mode - 0.03

    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) >= 2

    def statistics(bn):
        return np.concatenate(
            [ops.convert_to_numpy(v) for v in (bn.moving_mean, bn.moving_variance)]
        )

    before = [statistics(bn) for bn in bns]
    bk.training.recalibrate_batchnorm(model, [2 * x[:64] + 0.5], layers=bns[:1])
    assert not np.allclose(statistics(bns[0]), before[0])
    for bn, kept in zip(bns[1:], before[1:], strict=True):  # the others keep theirs
        np.testing.assert_array_equal(statistics(bn), kept)
        assert bn.momentum == 0.99

    # A slice past the data's end is empty: skipped, not averaged in as NaN statistics.
    chunks = [x[i : i + 128] for i in range(0, 2 * len(x), 128)]
    used = bk.training.recalibrate_batchnorm(model, chunks)
    assert used == sum(len(c) > 0 for c in chunks) < len(chunks)
    for bn in bns:
        assert np.isfinite(statistics(bn)).all()


@pytest.mark.parametrize(
    "data, match",
    [
        ((np.zeros((0, 8, 8, 1)), np.zeros((0,))), "empty"),
        ((np.zeros((4, 9, 9, 1)), np.zeros((4,))), r"shape \(9, 9, 1\).*expects \(8, 8, 1\)"),
        ((np.zeros((4, 8, 8, 1)), np.full((4,), 12)), r"labels must be integers in \[0, 10\)"),
        ((np.zeros((4, 8, 8, 1)), np.zeros((5,))), "different lengths"),
        ((np.full((4, 8, 8, 1), np.nan), np.zeros((4,))), "NaN or infinite"),
        ((np.full((4, 8, 8, 1), np.inf), np.zeros((4,))), "NaN or infinite"),
        ((np.zeros((4, 8, 8, 1)), np.eye(10)[:4]), "look one-hot: pass np.argmax"),
        ((np.zeros((4, 8, 8, 1)), np.array([0, 1, -1, 2])), r"Received values in \[-1, 2\]"),
        ((np.zeros((4, 8, 8, 1)), np.array([0, 1, 0.5, 2])), r"integers in \[0, 10\)"),
    ],
)
def test_bad_data_is_rejected_with_clear_errors(data, match):
    with pytest.raises(ValueError, match=match):
        bk.progressive_fit(tiny_model(), data, config=bk.BiTATConfig(**FAST), verbose=0)


def test_bad_models_are_rejected():
    dense = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    data = (np.zeros((4, 8, 8, 1)), np.zeros((4,)))
    with pytest.raises(ValueError, match="no layer progressive_fit can binarize"):
        bk.progressive_fit(dense, data, verbose=0)
    with pytest.raises(ValueError, match="not built"):
        bk.progressive_fit(keras.Sequential([keras.layers.Conv2D(4, 3)]), data, verbose=0)
    with pytest.raises(TypeError, match="BiTATConfig"):
        bk.progressive_fit(tiny_model(), data, config={"lam": 1}, verbose=0)


def _functional(body, inputs=None):
    inputs = inputs or [keras.Input((8, 8, 1))]
    x = body(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def test_unsupported_models_and_unbatched_data_get_clear_errors_before_training():
    import tensorflow as tf

    conv = keras.layers.Conv2D
    data = (np.zeros((4, 8, 8, 1)), np.zeros((4,)))

    def dilated(inputs):
        x = conv(4, 3, padding="same")(inputs[0])
        return conv(4, 3, padding="same", dilation_rate=2, name="dilated")(x)

    def two_inputs(inputs):
        x = keras.layers.Concatenate()(inputs)
        return conv(4, 1)(conv(4, 3, padding="same")(x))

    cases = [
        # a dilated conv stays float (the plan says why); nothing else is left to binarize
        (
            _functional(dilated),
            r"no layer progressive_fit can binarize(.|\n)*dilated  +Conv2D"
            r"  +3x3  +float: dilated \(dilation_rate=\(2, 2\)",
        ),
        (
            _functional(two_inputs, [keras.Input((8, 8, 1)), keras.Input((8, 8, 1))]),
            "has 2 inputs",
        ),
    ]
    for model, match in cases:
        with pytest.raises(ValueError, match=match):
            bk.progressive_fit(model, data, config=bk.BiTATConfig(**FAST), verbose=0)
    unbatched = tf.data.Dataset.from_tensor_slices(data)
    with pytest.raises(ValueError, match=r"single samples of shape \(8, 8, 1\).*\.batch\("):
        bk.progressive_fit(tiny_model(), unbatched, config=bk.BiTATConfig(**FAST), verbose=0)


def test_non_finite_loss_names_layer_and_phase_and_restores_the_model(digits, tmp_path):
    config = bk.BiTATConfig(**{**FAST, "learning_rate": 1e30, "lam": 1e30})
    fp = tiny_model()
    expected = r"layer 1/5 .block1_conv3x3., phase .quantize."
    with pytest.raises(bk.NonFiniteLossError, match=expected) as err:
        bk.progressive_fit(fp, digits, config=config, checkpoint_dir=tmp_path, verbose=0)
    restored = err.value.model
    assert restored.get_layer("block1_conv3x3").input_quantizer is None
    for a, b in zip(fp.weights, restored.weights, strict=True):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))


def test_tf_data_input_works_and_empty_dataset_is_rejected(digits):
    import tensorflow as tf

    x, y = digits
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    model = bk.models.reactnet_mobilenet(
        (8, 8, 1), num_classes=10, width_multiplier=0.25, blocks=[(64, 1)]
    )
    config = bk.BiTATConfig(**{**FAST, "finetune_epochs": 0})
    result = bk.progressive_fit(model, ds, config=config, validation_data=ds, verbose=0)
    assert len(result.history) == 3 and all("val_accuracy" in h for h in result.history)
    with pytest.raises(ValueError, match="empty dataset"):
        bk.progressive_fit(model, ds.take(0), config=config, verbose=0)


def test_a_dataset_trains_through_one_iterator_a_pass_per_epoch(digits):
    """Every fit over a tf.data.Dataset (the baselines', each phase's) reads one iterator
    over its repeated passes, ``steps`` batches per Keras epoch, and the same object in
    every phase; evaluation reads one pass. Each Keras epoch is then one whole pass."""
    import tensorflow as tf

    from bitat_keras.fit.data import TrainData

    x, y = digits
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=1).batch(100)
    model = bk.models.reactnet_mobilenet(
        (8, 8, 1), num_classes=10, width_multiplier=0.25, blocks=[(64, 1)]
    )
    data = TrainData(ds, model, batch_size=100)
    kwargs = data.fit_kwargs(seed=0)
    whole, steps = data.phase_kwargs(2, seed=1)
    part, part_steps = data.phase_kwargs(0.5, seed=2)
    assert kwargs["x"] is whole["x"] is part["x"]  # one object: no retrace per phase
    assert int(kwargs["x"].cardinality()) == int(tf.data.INFINITE_CARDINALITY)
    assert kwargs["steps_per_epoch"] == whole["steps_per_epoch"] == data.steps
    assert (whole["epochs"], steps) == (2, 2 * data.steps)
    assert (part["epochs"], part["steps_per_epoch"]) == (1, part_steps)
    assert data.eval_kwargs()["x"] is ds
    labels = [np.asarray(b[1]) for b in kwargs["x"].take(2 * data.steps)]
    first, second = (np.concatenate(labels[i * data.steps : (i + 1) * data.steps]) for i in (0, 1))
    for one_pass in (first, second):  # each epoch's batches: every sample once
        np.testing.assert_array_equal(np.sort(one_pass), np.sort(y))
    assert not np.array_equal(first, second)  # reshuffled between passes, as before


@pytest.mark.parametrize("name", ["cross", "filter", "none"])
def test_other_ablations_run_and_size_v_as_documented(digits, name):
    model = bk.models.reactnet_mobilenet(
        (8, 8, 1), num_classes=10, width_multiplier=0.25, blocks=[(64, 1)]
    )
    config = bk.BiTATConfig(**{**FAST, "transform": name, "finetune_epochs": 0})
    result = bk.progressive_fit(model, digits, config=config, verbose=0)
    v = result.v_parameters
    full = (72 + 8 + 8) ** 2  # one block: 3x3x8 + 8 + 8 input dimensions
    assert v["full"] == full
    assert v["used"] == {"cross": full, "filter": (8 + 8 + 8) ** 2, "none": 0}[name]
    if name == "none":
        assert all(h["penalty"] == 0 and h["reg"] == 0 for h in result.history)
    else:
        assert all(h["penalty"] > 0 for h in result.history)


def test_activations_first_variant_with_distillation_and_checkpoint(digits, tmp_path):
    model = bk.models.reactnet_mobilenet(
        (8, 8, 1), num_classes=10, width_multiplier=0.25, blocks=[(64, 1)]
    )
    config = bk.BiTATConfig(
        **{**FAST, "finetune_epochs": 0, "activations_first_epochs": 1, "distillation": "all"}
    )
    result = bk.progressive_fit(model, digits, config=config, checkpoint_dir=tmp_path, verbose=0)
    assert [h["phase"] for h in result.history] == ["activations"] + ["quantize"] * 3
    weights = [ops.convert_to_numpy(w) for w in result.model.weights]
    # A second call with the same arguments finds every layer done and trains nothing.
    again = bk.progressive_fit(model, digits, config=config, checkpoint_dir=tmp_path, verbose=0)
    assert len(again.history) == 4
    for a, b in zip(weights, again.model.weights, strict=True):
        np.testing.assert_array_equal(a, ops.convert_to_numpy(b))
    for name in bk.models.eligible_layers(model):
        layer = again.model.get_layer(name)
        assert layer.input_quantizer is not None and layer.kernel_quantizer is not None
    with pytest.raises(ValueError, match="other arguments"):
        bk.progressive_fit(model, digits, config=bk.BiTATConfig(**FAST), checkpoint_dir=tmp_path)
    # Other training data or other pre-trained weights are refused too, before any training.
    x, y = digits
    with pytest.raises(bk.CheckpointError, match="training data differ"):
        bk.progressive_fit(model, (x[::-1], y[::-1]), config=config, checkpoint_dir=tmp_path)
    other = keras.models.clone_model(model)
    other.set_weights([w * 2 for w in model.get_weights()])
    with pytest.raises(bk.CheckpointError, match="pre-trained weights"):
        bk.progressive_fit(other, digits, config=config, checkpoint_dir=tmp_path)
    # Damaged files are named, with what to do; nothing but the checkpointer's files is removed.
    (tmp_path / "notes.txt").write_text("mine")
    state = json.loads((tmp_path / "state.json").read_text())
    weights = tmp_path / state["weights_file"]
    weights.write_bytes(b"not an h5 file")
    with pytest.raises(bk.CheckpointError, match=f"{state['weights_file']}.*cannot be read"):
        bk.progressive_fit(model, digits, config=config, checkpoint_dir=tmp_path, verbose=0)
    weights.unlink()
    with pytest.raises(bk.CheckpointError, match=f"{state['weights_file']}.*does not exist"):
        bk.progressive_fit(model, digits, config=config, checkpoint_dir=tmp_path, verbose=0)
    (tmp_path / "state.json").write_text('{"completed": 3,')
    with pytest.raises(bk.CheckpointError, match=r"state\.json.*not valid JSON.*Delete"):
        bk.progressive_fit(model, digits, config=config, checkpoint_dir=tmp_path, verbose=0)
    (tmp_path / "state.json").unlink()
    bk.progressive_fit(model, digits, config=config, checkpoint_dir=tmp_path, verbose=0)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"transform": "pca"}, "Unknown transform 'pca'"),
        ({"distillation": "soft"}, "Unknown distillation 'soft'"),
        ({"penalty_gradient": "both"}, r"Unknown penalty_gradient 'both'.*\('latent', 'sign'\)"),
        ({"groups": 0}, "`groups` must be an integer >= 1. Received: 0"),
        ({"lam": -1.0}, "`lam` must be >= 0"),
    ],
)
def test_bad_config_values_name_what_was_received(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bk.BiTATConfig(**kwargs)
