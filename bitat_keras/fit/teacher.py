"""The pre-trained model as a starting point and a teacher: before any training, its
inference-mode accuracy on a sample of the training data is measured.

Inference mode uses BatchNorm's moving statistics. After a short training run (Keras'
momentum 0.99 needs hundreds of steps) they can still describe the initial weights, and
the model then scores near chance in inference mode while it scores well on the same
images with batch statistics (training mode). Such statistics are re-estimated on a copy
(with a warning). A teacher still near chance after that would teach noise: the methods
that distil from it stop with an error."""

import keras
import numpy as np

from bitat_keras import caller
from bitat_keras.fit.batchnorm import recalibrate_batchnorm
from bitat_keras.graph.structure import flatten_model

SAMPLES = 512  # training images the check scores
BATCHES = 8  # batches that re-estimate stale BatchNorm statistics
NEAR_CHANCE = 0.1  # near chance: within this share of the way from chance to 100 %
BATCH_VALUES = 64 * 224 * 224 * 3  # input values per scoring batch


def near_chance(accuracy, chance):
    """Whether ``accuracy`` is within ``NEAR_CHANCE`` of the way from ``chance`` to 1."""
    return accuracy <= chance + NEAR_CHANCE * (1.0 - chance)


def accuracies(model, x, y, batch_size=None):
    """``(inference, batch_statistics)``: top-1 accuracy of ``model`` on ``(x, y)`` with
    its BatchNorm moving statistics, and with each batch's own statistics (training mode,
    through ``stateless_call``: the model's variables are not changed). Batches of
    ``batch_size`` images (default: as many as hold ``BATCH_VALUES`` input values, 64 at
    224x224x3) bound the memory a large input needs; small images go in few eager calls,
    each of which costs more than its arithmetic on a small network."""
    if batch_size is None:
        batch_size = max(1, BATCH_VALUES // int(np.prod(np.shape(x)[1:])))
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    inference, batch = [], []
    for i in range(0, len(x), batch_size):
        chunk = x[i : i + batch_size]
        inference.append(keras.ops.convert_to_numpy(model(chunk, training=False)))
        logits, _ = model.stateless_call(trainable, non_trainable, chunk, training=True)
        batch.append(keras.ops.convert_to_numpy(logits))
    y = np.asarray(y)
    return tuple(
        float(np.mean(np.argmax(np.concatenate(out), -1) == y)) for out in (inference, batch)
    )


def check_pretrained(model, data, *, teacher, seed=0):
    """The model to binarize (and distil from): ``model``, or a copy of it with its
    BatchNorm statistics re-estimated when they are stale.

    Args:
        model: the pre-trained full-precision model (left untouched).
        data: the run's ``TrainData``; ``SAMPLES`` of its images are scored.
        teacher: whether the method distils from the model: then a model still near chance
            in inference mode while it scores above chance with batch statistics (the
            labels are learnable) is an error.
        seed: seeds the sample.

    Returns:
        ``model``, or a flat copy with re-estimated BatchNorm statistics.

    Raises:
        ValueError: ``teacher`` and the model still scores near chance in inference mode.

    Example:
        >>> fp = check_pretrained(fp, TrainData((x, y), fp, 256), teacher=True)  # doctest: +SKIP
    """
    x, y = data.sample(SAMPLES, seed)
    chance = float(np.max(np.bincount(np.asarray(y).astype("int64")))) / len(y)
    inference, batch = accuracies(model, x, y)
    if not near_chance(inference, chance) or near_chance(batch, chance):
        return model  # it knows the task, or the labels teach it nothing to recover
    flat = flatten_model(model)
    has_bn = any(isinstance(layer, keras.layers.BatchNormalization) for layer in flat.layers)
    if has_bn:
        if flat is model:  # not nested: a copy of its own (a flattened one already is)
            flat = keras.models.clone_model(model)
            flat.set_weights(model.get_weights())
        recalibrate_batchnorm(flat, data.batches(BATCHES, seed))
        repaired, _ = accuracies(flat, x, y)
        if not near_chance(repaired, chance):
            caller.warn(
                f"The pre-trained model {model.name!r} scores {inference:.1%} in inference "
                f"mode on {len(y)} training images (chance {chance:.1%}) but {batch:.1%} "
                "with batch statistics: its BatchNorm moving statistics are stale (a short "
                "training run leaves them behind the weights). They were re-estimated on "
                f"{BATCHES} training batches for this run ({repaired:.1%}); the model you "
                "passed is unchanged. To keep this from recurring, re-estimate them after "
                "training (bk.training.recalibrate_batchnorm) or train with a lower "
                "BatchNormalization momentum.",
            )
            return flat
        inference = repaired
    if teacher:
        raise ValueError(
            f"The pre-trained model {model.name!r}, the teacher, scores {inference:.1%} in "
            f"inference mode on {len(y)} training images (chance {chance:.1%})"
            + (", also after re-estimating its BatchNorm statistics," if has_bn else ",")
            + f" but {batch:.1%} with batch statistics. Distilling from it would teach "
            "noise. Expected a teacher that knows the task in inference mode: check how it "
            "was trained and its BatchNorm layers, or train without a teacher "
            "(bk.naive_ste, or BiTATConfig(distillation='none'))."
        )
    return model


__all__ = ["accuracies", "check_pretrained", "near_chance"]
