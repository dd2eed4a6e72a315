import keras
import numpy as np
from keras import ops

from bitat_keras.fit import distill
from bitat_keras.fit.batches import SeededBatches, fit_input
from bitat_keras.fit.distill import (
    Distiller,
    split_targets,
    targets,
    teacher_outputs,
)


def test_distribution_loss_matches_numpy_soft_cross_entropy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4)).astype("float32")
    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    d = Distiller(student, teacher)
    y_pred = student(x)
    got = float(d.compute_loss(x=x, y=None, y_pred=y_pred))
    t = ops.convert_to_numpy(teacher(x))
    s = ops.convert_to_numpy(y_pred)
    p = np.exp(t - t.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    log_q = s - s.max(1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(1, keepdims=True))
    np.testing.assert_allclose(got, -np.mean(np.sum(p * log_q, 1)), rtol=1e-5)
    assert not teacher.trainable


def test_distiller_trains_student_towards_teacher_only():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 4)).astype("float32")
    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    frozen = [w.copy() for w in teacher.get_weights()]
    d = Distiller(student, teacher)
    d.compile(keras.optimizers.Adam(0.05), loss=None)
    before = float(d.compute_loss(x=x, y_pred=student(x)))
    d.fit(x, np.zeros(64), epochs=20, batch_size=16, verbose=0)
    after = float(d.compute_loss(x=x, y_pred=student(x)))
    assert after < before
    for a, b in zip(frozen, teacher.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def _dense(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])


def test_teacher_outputs_are_the_teachers_inference_logits_and_capped(monkeypatch):
    x = np.random.default_rng(2).normal(size=(37, 4)).astype("float32")
    teacher = _dense(0)
    logits = teacher_outputs(teacher, x, batch_size=8)
    np.testing.assert_allclose(logits, ops.convert_to_numpy(teacher(x)), rtol=1e-6, atol=1e-6)
    assert logits.dtype == np.float32 and logits.shape == (37, 3)
    monkeypatch.setattr(distill, "CACHE_BYTES", 37 * 3 * 4 - 1)  # one value too many
    assert teacher_outputs(teacher, x, batch_size=8) is None


def test_logits_that_come_with_the_labels_train_as_running_the_teacher():
    """A student distilled from batches that carry the teacher's logits ends where one
    distilled from the teacher itself ends; the teacher given in the first case has other
    weights, so reading them instead of the logits would show."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = rng.integers(0, 3, size=64)
    teacher, other = _dense(1), _dense(2)
    start = _dense(4).get_weights()
    logits = teacher_outputs(teacher, x, batch_size=16)
    trained = []
    for given, cached in ((teacher, None), (other, logits)):
        student = _dense(4)
        student.set_weights(start)
        d = Distiller(student, given)
        d.compile(keras.optimizers.Adam(0.05), loss=None)
        batches = SeededBatches(x, y, 16, seed=0, teacher_logits=cached)
        d.fit(**fit_input({"x": batches, "shuffle": False}), epochs=3, verbose=0)
        trained.append(student.get_weights())
    for a, b in zip(*trained, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ops.convert_to_numpy(other(x)), logits)


def test_split_targets_reads_labels_alone_or_with_logits():
    labels, logits = np.arange(3), np.ones((3, 2))
    assert split_targets(labels)[0] is labels and split_targets(labels)[1] is None
    got = split_targets(targets(labels, logits))
    assert got[0] is labels and got[1] is logits
