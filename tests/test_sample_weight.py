"""Per-sample weights, as ``keras.Model.fit(x, y, sample_weight=w)`` takes them: in
``TrainData`` (arrays and datasets, batches, digest), in the distillation losses, and
through ``progressive_fit`` and both baselines."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import bitat_keras as bk
from bitat_keras.fit import baselines
from bitat_keras.fit.checkpoint import data_digest
from bitat_keras.fit.data import TrainData, with_sample_weight
from bitat_keras.fit.distill import Distiller
from bitat_keras.fit.phase_runner import PhaseRunner
from bitat_keras.fit.training import task_loss

N, CLASSES = 16, 3

# One step per phase with batch = all samples; transform "none": no input statistics, so
# the training data enter only through the loss.
FAST = dict(
    epochs_per_layer=1,
    finetune_epochs=0,
    final_epochs=0,
    batch_size=N,
    groups=8,
    stats_images=N,
    stats_rows=256,
    bn_recalibration_batches=2,
    transform="none",
)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few steps per phase, tiny models
        yield


def plain_model(seed=0):
    """Two convs (the second one binarizable), no BatchNorm and no ReLU (no threshold):
    the data enter training through the loss only."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    outputs = keras.layers.Dense(CLASSES, name="classifier")(h)
    return keras.Model(inputs, outputs, name="plain")


def data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 1)).astype("float32")
    y = rng.integers(0, CLASSES, n)
    w = rng.uniform(0.1, 2.0, n).astype("float32")
    return x, y, w


def numpy_ce(logits, labels):
    """Per-sample cross-entropy of integer labels on logits."""
    z = logits - logits.max(axis=-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -log_p[np.arange(len(labels)), labels]


def numpy_soft_ce(teacher_logits, logits):
    """Per-sample cross-entropy of the student's softmax to the teacher's."""
    t = np.exp(teacher_logits - teacher_logits.max(axis=-1, keepdims=True))
    t /= t.sum(axis=-1, keepdims=True)
    z = logits - logits.max(axis=-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -(t * log_p).sum(axis=-1)


def numpy_out(model, x):
    return np.asarray(ops.convert_to_numpy(model(x, training=False)), dtype="float64")


def assert_same_weights(a, b, atol=1e-6):
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for u, v in zip(wa, wb, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=atol)


# -- (a) the losses against numpy ---------------------------------------------------------
def test_distiller_losses_are_weighted_as_keras_weights_a_loss():
    x, y, w = data()
    student, teacher = plain_model(1), plain_model(2)
    d = Distiller(student, teacher)
    d.compile(optimizer="adam", loss=None)
    kd = numpy_soft_ce(numpy_out(teacher, x), numpy_out(student, x))
    expected = np.sum(w * kd) / N  # "sum_over_batch_size"
    y_pred = student(x, training=False)
    got = ops.convert_to_numpy(d.distribution_loss(x, y_pred, w))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    got = ops.convert_to_numpy(d.compute_loss(x, y, y_pred, sample_weight=w))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    unweighted = ops.convert_to_numpy(d.compute_loss(x, y, y_pred))
    np.testing.assert_allclose(unweighted, kd.mean(), rtol=1e-5)
    # Through Keras' own step: evaluate hands the batch's weights to compute_loss.
    loss = d.evaluate(x, y, sample_weight=w, batch_size=N, verbose=0)
    np.testing.assert_allclose(np.ravel(loss)[0], expected, rtol=1e-5)

    # alpha: the compiled task loss, weighted by Keras, is added.
    d = Distiller(student, teacher, alpha=0.5)
    d.compile(optimizer="adam", loss=task_loss())
    task = np.sum(w * numpy_ce(numpy_out(student, x), y)) / N
    got = ops.convert_to_numpy(d.compute_loss(x, y, y_pred, sample_weight=w))
    np.testing.assert_allclose(got, expected + 0.5 * task, rtol=1e-5)


def test_phase_trainer_loss_is_weighted_as_keras_weights_a_loss():
    x, y, w = data()
    config = bk.BiTATConfig(**{**FAST, "distillation": "all"})
    runner = PhaseRunner(plain_model(), (x, y, w), config, None, [], 0)
    trainer = runner.trainer
    logits = numpy_out(trainer, x)
    task = np.sum(w * numpy_ce(logits, y)) / N
    kd = np.sum(w * numpy_soft_ce(numpy_out(trainer.teacher, x), logits)) / N
    y_pred = trainer(x, training=False)
    for distill, expected in ((False, task), (True, kd)):
        trainer.set_distill(distill)
        for training in (False, True):  # no block gate on: no Eq. 13 terms
            got = trainer.compute_loss(x, y, y_pred, sample_weight=w, training=training)
            np.testing.assert_allclose(ops.convert_to_numpy(got), expected, rtol=1e-5)
        loss = trainer.evaluate(x, y, sample_weight=w, batch_size=N, verbose=0)[0]
        np.testing.assert_allclose(loss, expected, rtol=1e-5)


# -- TrainData ------------------------------------------------------------------------------
def test_batches_carry_the_weights_of_their_rows():
    x, y, _ = data()
    x[:] = np.arange(N, dtype="float32")[:, None, None, None]  # x[i] == i everywhere
    w = np.arange(N, dtype="float32") / 10
    td = TrainData((x, y, w), plain_model(), batch_size=5)
    assert td.weighted
    whole = td.fit_kwargs(seed=3)["x"]  # the baselines' batches: the same rows' weights
    for batches in (whole, *(td.phase_kwargs(e, seed=3)[0]["x"] for e in (1, 1.5))):
        for i in range(len(batches)):
            bx, by, bw = batches[i]
            rows = bx[:, 0, 0, 0].astype(int)
            np.testing.assert_array_equal(bw, w[rows])
            np.testing.assert_array_equal(by, y[rows])
    sx, sy = td.sample(4, seed=0)  # sample() stays (x, y)
    assert len(sx) == len(sy) == 4
    plain = TrainData((x, y), plain_model(), batch_size=5)
    assert not plain.weighted and len(plain.fit_kwargs(seed=0)["x"][0]) == 2
    assert len(plain.phase_kwargs(1, seed=3)[0]["x"][0]) == 2


def test_dataset_of_weighted_batches():
    x, y, w = data()
    ds = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(4)
    td = TrainData(ds, plain_model(), batch_size=4)
    assert td.weighted and td.steps == 4
    sx, sy = td.sample(3, seed=0)
    np.testing.assert_array_equal(sx, x[:3])
    np.testing.assert_array_equal(sy, y[:3])
    assert sum(len(b) for b in td.batches(2, seed=0)) == 8
    assert len(td.images(6, seed=0)) == 6
    kwargs, steps = td.phase_kwargs(0.5, seed=0)
    assert steps == 2 and kwargs["steps_per_epoch"] == 2


def test_digest_changes_with_the_weights():
    x, y, w = data()
    model = plain_model()

    def digest(d):
        return TrainData(d, model, batch_size=4).digest

    other = w.copy()
    other[5] += 0.25
    unweighted = digest((x, y))
    assert unweighted == data_digest(x, y)  # unchanged for data without weights
    assert len({unweighted, digest((x, y, w)), digest((x, y, other))}) == 3
    assert digest((x, y, w)) == digest((x, y, w.copy()))

    def ds(*t):
        return tf.data.Dataset.from_tensor_slices(t).batch(8)

    # a dataset's digest reads its first batch (x, y and weights alike)
    assert len({digest(ds(x, y)), digest(ds(x, y, w)), digest(ds(x, y, other))}) == 3


# -- (b) zero weights train exactly as dropping those samples -----------------------------
# Kept samples weigh N / M = 2: with batch = all samples, sum(w_i * l_i) / N over the full
# data is the subset's mean loss sum(l_i) / M, so one step (Adam from scratch) must give
# the same weights; the other forms of the same weights must give them too.
KEEP = np.arange(N) % 2 == 0


def _weights_and_forms():
    x, y, _ = data()
    w = np.where(KEEP, 2.0, 0.0).astype("float32")
    subset = (x[KEEP], y[KEEP])
    dataset = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(N)
    return x, y, w, subset, dataset


def _check_forms(train):
    """``train(data, sample_weight, batch_size)`` -> model, for the subset and the three
    forms of the same weights."""
    x, y, w, subset, dataset = _weights_and_forms()
    reference = train(subset, None, int(KEEP.sum()))
    by_kwarg = train((x, y), w, N)
    assert_same_weights(by_kwarg, reference, atol=2e-6)
    assert_same_weights(train((x, y, w), None, N), by_kwarg)
    assert_same_weights(train(dataset, None, N), by_kwarg)
    # the weights matter: unweighted training differs
    unweighted = train((x, y), None, N)
    diffs = [
        np.abs(a - b).max()
        for a, b in zip(unweighted.get_weights(), by_kwarg.get_weights(), strict=True)
    ]
    assert max(diffs) > 1e-5
    return by_kwarg


@pytest.mark.parametrize("method, epochs", [("naive_ste", 1), ("reactnet_two_step", 2)])
def test_baselines_zero_weights_equal_dropping_samples(method, epochs):
    fp = plain_model()

    def train(d, sample_weight, batch_size):
        keras.utils.set_random_seed(0)
        model, _ = getattr(baselines, method)(
            fp, d, epochs=epochs, batch_size=batch_size, sample_weight=sample_weight
        )
        return model

    _check_forms(train)


def test_progressive_fit_zero_weights_equal_dropping_samples():
    fp = plain_model()

    def train(d, sample_weight, batch_size):
        keras.utils.set_random_seed(0)
        config = bk.BiTATConfig(**{**FAST, "batch_size": batch_size, "distillation": "all"})
        result = bk.progressive_fit(fp, d, config=config, sample_weight=sample_weight, verbose=0)
        assert all(np.isfinite(r["loss"]).all() for r in result.history)
        return result.model

    _check_forms(train)


def test_progressive_fit_ignores_the_labels_of_zero_weight_samples():
    """With the statistics on (aggregated transform), BatchNorm and the task loss: the
    labels of samples of weight 0 do not change the result."""
    x, y, w = data(32)
    w[::3] = 0.0
    flipped = np.where(w == 0, (y + 1) % CLASSES, y)
    fp = bk.models.reactnet_mobilenet(
        (8, 8, 1), num_classes=CLASSES, width_multiplier=0.125, blocks=((64, 1),)
    )
    config = bk.BiTATConfig(**{**FAST, "batch_size": 8, "transform": "aggregated"})
    models = []
    for labels in (y, flipped):
        keras.utils.set_random_seed(0)
        result = bk.progressive_fit(fp, (x, labels, w), config=config, verbose=0)
        models.append(result.model)
    assert_same_weights(*models, atol=1e-5)


# -- (d) errors -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "weights, match",
    [
        (np.ones(N - 1), r"shape \(16,\).*Received shape \(15,\)"),
        (np.ones((N, 1)), r"shape \(16,\).*Received shape \(16, 1\).*reshape\(-1\)"),
        (-np.ones(N), r"finite and >= 0.*negative"),
        (np.full(N, np.nan), r"finite and >= 0.*NaN or inf"),
        (np.full(N, np.inf), r"finite and >= 0.*NaN or inf"),
        (np.array(["a"] * N), r"real numbers.*dtype <U1"),
    ],
)
def test_bad_weights_are_explained(weights, match):
    x, y, _ = data()
    with pytest.raises(ValueError, match=match):
        TrainData((x, y, weights), plain_model(), batch_size=4)
    with pytest.raises(ValueError, match=match):
        baselines.naive_ste(plain_model(), (x, y), epochs=1, sample_weight=weights)


def test_bad_weights_in_a_dataset_are_explained():
    x, y, w = data()
    w[2] = -1.0
    ds = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(4)
    with pytest.raises(ValueError, match="`train_data`: sample_weight must be finite and >= 0"):
        TrainData(ds, plain_model(), batch_size=4)


def test_other_structures_name_both_accepted_forms():
    x, y, w = data()
    with pytest.raises(TypeError, match=r"\(x, y\) or \(x, y, sample_weight\).*length 4"):
        TrainData((x, y, w, w), plain_model(), batch_size=4)
    ds = tf.data.Dataset.from_tensor_slices((x, y, w, w)).batch(4)
    with pytest.raises(ValueError, match=r"yield \(x, y\) or \(x, y, sample_weight\) batches"):
        TrainData(ds, plain_model(), batch_size=4)


def test_sample_weight_argument_needs_numpy_pairs():
    x, y, w = data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    fp = plain_model()
    config = bk.BiTATConfig(**FAST)
    calls = [
        lambda d: bk.progressive_fit(fp, d, config=config, sample_weight=w, verbose=0),
        lambda d: baselines.naive_ste(fp, d, epochs=1, sample_weight=w),
        lambda d: baselines.reactnet_two_step(fp, d, epochs=2, sample_weight=w),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="cannot be given with a tf.data.Dataset"):
            call(ds)
        with pytest.raises(ValueError, match=r"already an \(x, y, sample_weight\) tuple"):
            call((x, y, w))
    pair = (x, y)
    assert with_sample_weight(pair, None) is pair
    combined = with_sample_weight([x, y], w)
    assert isinstance(combined, tuple) and combined[2] is w
