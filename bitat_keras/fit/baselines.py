"""Baselines of the paper's comparison: naive STE and ReActNet's two-step training."""

import time

import keras
import numpy as np

from bitat_keras.fit.backend import jit_compile
from bitat_keras.fit.batches import fit_input
from bitat_keras.fit.batchnorm import recalibrate_batchnorm
from bitat_keras.fit.data import TrainData, with_sample_weight
from bitat_keras.fit.distill import Distiller
from bitat_keras.fit.multi_worker import keras_fit_fixes
from bitat_keras.fit.teacher import check_pretrained
from bitat_keras.fit.training import (
    accuracy,
    compile_result,
    linear_decay,
    task_loss,
)
from bitat_keras.graph.binarization_plan import plan
from bitat_keras.graph.binarize import binarize
from bitat_keras.graph.precision import float32_policy
from bitat_keras.nn import quantizers
from bitat_keras.nn.layers import BinaryConv2D


def _optimizer(lr, steps, weight_decay=None):
    return keras.optimizers.Adam(linear_decay(lr, steps), weight_decay=weight_decay)


def _train(model, data, epochs, lr, weight_decay, teacher, verbose, callbacks):
    if teacher is not None:
        data.cache_teacher(teacher)  # its logits, once: the steps read them
    trainer = Distiller(model, teacher) if teacher is not None else model
    trainer.compile(
        optimizer=_optimizer(lr, epochs * data.steps, weight_decay),
        loss=None if teacher is not None else task_loss(),
        metrics=None if teacher is not None else ["accuracy"],
        jit_compile=jit_compile(),
    )
    # The data order: drawn from numpy's global generator, which keras.utils.set_random_seed
    # seeds (the same in every process of a multi-process run).
    order = int(np.random.randint(2**31 - 1))
    with keras_fit_fixes():
        trainer.fit(
            **fit_input(data.fit_kwargs(order)),
            epochs=epochs,
            verbose=verbose,
            callbacks=callbacks or [],
        )
    recalibrate_batchnorm(model, data.batches(20, seed=0))


def _planned_thresholds(fp_model, train_data):
    """The plan of ``fp_model`` (refused as ``binarize`` refuses it; its warnings name the
    line that called the baseline) and the layers it gives an input threshold."""
    decided = plan(fp_model, train_data, warn=True)
    decided.check()
    return decided.thresholded


def naive_ste(fp_model, train_data, *, epochs, learning_rate=8e-3, batch_size=256,
              verbose=0, callbacks=None, sample_weight=None, distill=False):  # fmt: skip
    """All eligible convs binarized at once from the FP weights, on the task loss (or,
    with ``distill``, on ReActNet's distributional loss with the FP model as teacher).

    Args:
        fp_model: the pre-trained full-precision model (left untouched).
        train_data: ``(x, y)`` or ``(x, y, sample_weight)`` arrays, the numpy pipeline of
            ``bk.datasets.augmented_batches``, or a tf.data.Dataset of ``(x, y)`` or
            ``(x, y, sample_weight)`` batches.
        epochs: training epochs (Adam, linear decay to 0).
        learning_rate: Adam's initial rate. 8e-3 was best or level with the best on the
            validation splits of two of the three benchmark presets (4e-3 on 2,000
            labelled images).
        batch_size, verbose, callbacks: as in ``keras.Model.fit``.
        sample_weight: optional per-sample weights (shape (N,), finite, >= 0) for numpy
            ``(x, y)`` ``train_data``, as in ``keras.Model.fit``. A ValueError with a
            Dataset or ``(x, y, sample_weight)`` data (give the weights there).
        distill: train on the soft cross-entropy to the FP model's outputs (the teacher)
            instead of the labels: one step, everything binary, no weight decay.

    Returns:
        ``(model, seconds)``.

    Example:
        >>> bnn, seconds = naive_ste(fp, (x, y), epochs=15)  # doctest: +SKIP
    """
    start = time.perf_counter()
    train_data = with_sample_weight(train_data, sample_weight)
    with float32_policy():  # a mixed-precision model comes back float32 (precision.py)
        data = TrainData(train_data, fp_model, batch_size)
        fp_model = check_pretrained(fp_model, data, teacher=distill)
        teacher = None
        if distill:
            teacher = keras.models.clone_model(fp_model)
            teacher.set_weights(fp_model.get_weights())
        model = binarize(fp_model, train_data, thresholds=_planned_thresholds(fp_model, train_data))
        _train(model, data, epochs, learning_rate, None, teacher, verbose, callbacks)
    return compile_result(model), time.perf_counter() - start


def reactnet_two_step(fp_model, train_data, *, epochs, learning_rate=4e-3, batch_size=256,
                      weight_decay=1e-5, verbose=0, callbacks=None,
                      sample_weight=None):  # fmt: skip
    """ReActNet's two-step recipe with the FP model as teacher (distributional loss).

    Step 1 binarizes the activations only (real weights, weight decay ``weight_decay``);
    step 2 binarizes the weights too (weight decay 0). ``epochs`` is the total budget,
    split evenly (step 1 gets the extra epoch of an odd budget). Adam, linear decay.

    Args:
        fp_model: the pre-trained full-precision model (left untouched; the teacher).
        train_data: ``(x, y)`` or ``(x, y, sample_weight)`` arrays, the numpy pipeline of
            ``bk.datasets.augmented_batches``, or a tf.data.Dataset of ``(x, y)`` or
            ``(x, y, sample_weight)`` batches.
        epochs: total training epochs of both steps (at least 2).
        learning_rate: Adam's initial rate (both steps). 4e-3 was best on the validation
            splits of the three benchmark presets.
        batch_size, verbose, callbacks: as in ``keras.Model.fit``.
        weight_decay: Adam's weight decay in step 1.
        sample_weight: optional per-sample weights (shape (N,), finite, >= 0) for numpy
            ``(x, y)`` ``train_data``; they weight the distributional loss as Keras
            weights a loss, ``sum(w_i * loss_i) / batch_size``. A ValueError with a
            Dataset or ``(x, y, sample_weight)`` data (give the weights there).

    Returns:
        ``(model, seconds)``.

    Example:
        >>> bnn, seconds = reactnet_two_step(fp, (x, y), epochs=15)  # doctest: +SKIP
    """
    if epochs < 2:
        raise ValueError(f"ReActNet's two steps need epochs >= 2. Received: epochs={epochs}")
    start = time.perf_counter()
    train_data = with_sample_weight(train_data, sample_weight)
    with float32_policy():
        data = TrainData(train_data, fp_model, batch_size)
        fp_model = check_pretrained(fp_model, data, teacher=True)
        teacher = keras.models.clone_model(fp_model)
        teacher.set_weights(fp_model.get_weights())
        thresholds = _planned_thresholds(fp_model, train_data)
        model = binarize(fp_model, train_data, kernel_quantizer=None, thresholds=thresholds)
        step1 = (epochs + 1) // 2
        _train(model, data, step1, learning_rate, weight_decay, teacher, verbose, callbacks)
        for layer in model.layers:
            if isinstance(layer, BinaryConv2D):
                layer.kernel_quantizer = quantizers.get("ste_sign")
        _train(model, data, epochs - step1, learning_rate, None, teacher, verbose, callbacks)
    return compile_result(model), time.perf_counter() - start


__all__ = ["accuracy", "naive_ste", "reactnet_two_step"]
