"""The paper's CIFAR-100 MobileNet experiment: FP pre-training -> BiTAT -> LCE flatbuffer.

BiTAT (Park, Yoon et al.), Table 1, CIFAR-100 with a ReActNet-A MobileNetV1: full precision
68.08 %, ReActNet-A 65.51 %, BiTAT 68.36 %. Appendix 7.1 gives the BiTAT hyperparameters,
which are this script's defaults (``bk.BiTATConfig.paper()``): Adam with linear
learning-rate decay, learning rate 3e-4 for both the quantization and the fine-tune phase,
batch size 800, 40 quantization epochs and 40 fine-tune epochs per layer, lambda = 100,
gamma = 1e-5, k = 256 input-dimension groups.

The paper does not spell out how its full-precision model was trained. Appendix 7.3 trains
its CIFAR-100 model "to convergence ... with standard SGD with a weight decay", so the FP
defaults are the standard CIFAR recipe: SGD with Nesterov momentum 0.9, learning rate 0.1
with cosine decay to 0, 200 epochs, batch 128, weight decay on the conv/dense kernels,
random crop (4-pixel zero padding) and horizontal flip (``bk.datasets``' CIFAR augmentation).
Keras' ``weight_decay`` is decoupled (``w -= lr * wd * w`` each step); the default 5e-3 is
the per-step decay that PyTorch's coupled 5e-4 gives with momentum 0.9 (5e-4 / (1 - 0.9)).
``--fp-model`` skips pre-training and starts from your own ``.keras`` model.

The full run is long (31 binary layers x 80 epochs of BiTAT, after 200 FP epochs): run it on
a GPU, with ``--checkpoint-dir`` so a killed run resumes (FP training after its last epoch,
BiTAT after its last completed layer). Every size can be shrunk for a quick try::

    python examples/cifar100_mobilenet.py --out runs/c100 --checkpoint-dir runs/c100/ckpt
    python examples/cifar100_mobilenet.py --out /tmp/c100 --train-limit 2000 --test-limit 500 \\
        --width 0.25 --blocks 3 --fp-epochs 3 --epochs-per-layer 1 --finetune-epochs 1

CIFAR-100 comes from tensorflow-datasets, which downloads and prepares it the first time
(~160 MB, needs internet); ``--data-dir`` points at an existing tensorflow_datasets folder.
``--out DIR`` receives ``fp.keras``, ``bitat.keras``, ``results.json`` and, under the
TensorFlow backend, ``bitat.tflite`` (LCE) and ``fp_float.tflite`` (plain TFLite, for size).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import keras
import numpy as np

import bitat_keras as bk
from bitat_keras.export import binary_conv_layers
from bitat_keras.fit.training import recalibrate_batchnorm

DATASET = "cifar100"
INPUT_SHAPE = (32, 32, 3)
NUM_CLASSES = 100

#: CIFAR-100 test accuracy (%) in the paper's Table 1 (MobileNet backbones).
PAPER_ACCURACY = {"full_precision": 68.08, "reactnet_a": 65.51, "bitat": 68.36}

#: The full-precision pre-training recipe (see the module docstring for the reasons).
FP_DEFAULTS = {
    "fp_epochs": 200,
    "fp_batch_size": 128,
    "fp_learning_rate": 0.1,
    "fp_momentum": 0.9,
    "fp_weight_decay": 5e-3,
}

#: Files kept in --checkpoint-dir besides progressive_fit's own checkpoint (in bitat/).
FP_CHECKPOINT = "fp.keras"
FP_SETTINGS = "fp_settings.json"
FP_BACKUP = "fp_backup"
BITAT_CHECKPOINT = "bitat"

_PAPER = bk.BiTATConfig.paper()  # the paper's 7.1 values


def _say(message):
    print(f"[cifar100] {message}", flush=True)


# ------------------------------------------------------------------------------------------
# Arguments.


def build_parser(prog=None):
    """The command-line parser; every BiTAT default is ``bk.BiTATConfig``'s paper default."""
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = p.add_argument_group("data (tensorflow-datasets' cifar100)")
    data.add_argument("--data-dir", default=None, help="tensorflow_datasets data directory")
    data.add_argument("--train-limit", type=int, default=None, help="use only N train images")
    data.add_argument("--test-limit", type=int, default=None, help="use only N test images")
    data.add_argument("--seed", type=int, default=_PAPER.seed, help="seed of everything")

    model = p.add_argument_group("model (ReActNet-A MobileNetV1)")
    model.add_argument("--width", type=float, default=1.0, help="width multiplier")
    model.add_argument(
        "--blocks",
        type=int,
        default=len(bk.models.MOBILENET_V1_BLOCKS),
        help="use the first N of MobileNetV1's 13 blocks",
    )

    fp = p.add_argument_group("full-precision pre-training (SGD, cosine decay)")
    fp.add_argument("--fp-model", default=None, help="start from this FP .keras model instead")
    fp.add_argument(
        "--fp-epochs", type=int, default=FP_DEFAULTS["fp_epochs"], help="FP training epochs"
    )
    fp.add_argument(
        "--fp-batch-size", type=int, default=FP_DEFAULTS["fp_batch_size"], help="FP batch size"
    )
    fp.add_argument(
        "--fp-learning-rate",
        type=float,
        default=FP_DEFAULTS["fp_learning_rate"],
        help="initial SGD learning rate",
    )
    fp.add_argument(
        "--fp-momentum", type=float, default=FP_DEFAULTS["fp_momentum"], help="Nesterov momentum"
    )
    fp.add_argument(
        "--fp-weight-decay",
        type=float,
        default=FP_DEFAULTS["fp_weight_decay"],
        help="Keras' decoupled weight decay on kernels",
    )

    bitat = p.add_argument_group("BiTAT (paper appendix 7.1)")
    bitat.add_argument(
        "--epochs-per-layer",
        type=int,
        default=_PAPER.epochs_per_layer,
        help="quantization epochs of each layer",
    )
    bitat.add_argument(
        "--finetune-epochs",
        type=int,
        default=_PAPER.finetune_epochs,
        help="fine-tune epochs of the layers above, after each layer",
    )
    bitat.add_argument(
        "--batch-size", type=int, default=_PAPER.batch_size, help="BiTAT (and test) batch size"
    )
    bitat.add_argument(
        "--learning-rate",
        type=float,
        default=_PAPER.learning_rate,
        help="Adam learning rate of the quantization phase (linear decay)",
    )
    bitat.add_argument(
        "--finetune-learning-rate",
        type=float,
        default=_PAPER.finetune_learning_rate,
        help="Adam learning rate of the fine-tune phase (linear decay)",
    )
    bitat.add_argument("--lam", type=float, default=_PAPER.lam, help="lambda of Eq. 13")
    bitat.add_argument("--gamma", type=float, default=_PAPER.gamma, help="l1 weight of Eq. 13")
    bitat.add_argument("--groups", type=int, default=_PAPER.groups, help="k of the k-means")
    bitat.add_argument(
        "--transform",
        default=_PAPER.transform,
        choices=["aggregated", "cross", "intra", "filter", "none"],
        help="BiTAT or one of the ablations of the paper's Figure 7",
    )

    run = p.add_argument_group("run")
    run.add_argument("--out", default="cifar100_bitat", help="output directory")
    run.add_argument("--checkpoint-dir", default=None, help="resume from / checkpoint to here")
    run.add_argument("--no-convert", action="store_true", help="skip the LCE conversion")
    run.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    return p


def _check_args(args):
    for name in ("train_limit", "test_limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1. Received: {value}")
    total = len(bk.models.MOBILENET_V1_BLOCKS)
    if not 1 <= args.blocks <= total:
        raise ValueError(f"--blocks must be in [1, {total}]. Received: {args.blocks}")
    if not args.width > 0:
        raise ValueError(f"--width must be > 0. Received: {args.width}")
    for name in ("fp_batch_size", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1.")
    if args.fp_epochs < 0:
        raise ValueError(f"--fp-epochs must be >= 0. Received: {args.fp_epochs}")


def bitat_config(args):
    """The ``BiTATConfig`` for these arguments (the paper's 7.1 values by default)."""
    return bk.BiTATConfig.paper(
        lam=args.lam,
        gamma=args.gamma,
        groups=args.groups,
        learning_rate=args.learning_rate,
        finetune_learning_rate=args.finetune_learning_rate,
        epochs_per_layer=args.epochs_per_layer,
        finetune_epochs=args.finetune_epochs,
        batch_size=args.batch_size,
        transform=args.transform,
        seed=args.seed,
    )


# ------------------------------------------------------------------------------------------
# Data, model, training.


def load_data(args, batch_size, split, augment=None):
    """A ``tf.data`` pipeline of CIFAR-100 ``(images, labels)`` batches (``bk.datasets``).

    Raises:
        bk.datasets.DatasetUnavailableError: tensorflow-datasets has no prepared copy and
            cannot download one.
    """
    limit = args.train_limit if split == "train" else args.test_limit
    return bk.datasets.load(
        DATASET,
        split,
        data_dir=args.data_dir,
        limit=limit,
        seed=args.seed,
        batch_size=batch_size,
        augment=augment,
    )


def build_model(width=1.0, blocks=None, name="cifar100_mobilenet_fp"):
    """The full-precision ReActNet-A MobileNetV1 for 32x32x3 inputs and 100 classes.

    Args:
        width: width multiplier (1.0 is the paper's network).
        blocks: use the first ``blocks`` of MobileNetV1's 13 blocks (None: all 13).
        name: model name.
    """
    spec = bk.models.MOBILENET_V1_BLOCKS[: blocks or len(bk.models.MOBILENET_V1_BLOCKS)]
    return bk.models.reactnet_mobilenet(
        INPUT_SHAPE, num_classes=NUM_CLASSES, width_multiplier=width, blocks=spec, name=name
    )


def _steps(dataset):
    steps = int(dataset.cardinality())
    return steps if steps > 0 else sum(1 for _ in dataset)


def fp_optimizer(model, steps, lr, momentum, weight_decay):
    """SGD (Nesterov) with cosine decay to 0 over ``steps``, decay on kernels only."""
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(steps, 1))
    optimizer = keras.optimizers.SGD(
        schedule, momentum=momentum, nesterov=True, weight_decay=weight_decay or None
    )
    if weight_decay:  # BatchNorm, learnable biases and RPReLU slopes are not decayed
        optimizer.exclude_from_weight_decay(
            var_list=[v for v in model.trainable_variables if v.name != "kernel"]
        )
    return optimizer


def pretrain(
    model, train, epochs, *, lr, momentum, weight_decay, backup_dir=None, callbacks=(), verbose=2
):
    """Train the full-precision model, then re-estimate its BatchNorm statistics.

    Args:
        model: the FP model (trained in place).
        train: augmented ``tf.data`` training pipeline.
        epochs: number of epochs (0 only recalibrates BatchNorm).
        lr, momentum, weight_decay: SGD settings (see :func:`fp_optimizer`).
        backup_dir: if given, Keras' ``BackupAndRestore`` saves after every epoch there and a
            restarted call continues from the last saved epoch.
        callbacks: more Keras callbacks for ``fit`` (after the backup callback).
        verbose: Keras' verbosity.
    """
    model.compile(
        fp_optimizer(model, epochs * _steps(train), lr, momentum, weight_decay),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        # As progressive_fit: XLA only under JAX (under TensorFlow its compile time outweighs
        # its gain on CPU-sized runs; torch.compile recompiles too often).
        jit_compile=keras.backend.backend() == "jax",
    )
    if epochs:
        backup = [] if backup_dir is None else [keras.callbacks.BackupAndRestore(backup_dir)]
        model.fit(train, epochs=epochs, callbacks=[*backup, *callbacks], verbose=verbose)
    # BatchNorm's moving averages lag behind short runs (docs/method.md): re-estimate them.
    recalibrate_batchnorm(model, (np.asarray(x) for x, _ in train.take(20)))
    return model


def accuracy(model, dataset):
    """Top-1 accuracy of a logits model on a ``tf.data`` pipeline of ``(x, y)`` batches."""
    correct = total = 0
    for x, y in dataset:
        logits = model.predict_on_batch(np.asarray(x))
        correct += int(np.sum(np.argmax(logits, axis=-1) == np.asarray(y)))
        total += len(y)
    return correct / total if total else float("nan")


def _fp_settings(args):
    keys = ("width", "blocks", "seed", "train_limit", *FP_DEFAULTS)
    return {k: getattr(args, k) for k in keys}


def full_precision_model(args, train, verbose):
    """The pre-trained FP model: from --fp-model, from the checkpoint, or trained now.

    Returns:
        ``(model, seconds spent training, where it came from)``.
    """
    if args.fp_model:
        model = keras.saving.load_model(args.fp_model, compile=False)
        if tuple(model.inputs[0].shape[1:]) != INPUT_SHAPE or model.outputs[0].shape[-1] != 100:
            raise ValueError(
                f"--fp-model {args.fp_model!r} must take {INPUT_SHAPE} images and output "
                f"{NUM_CLASSES} logits. Received input {tuple(model.inputs[0].shape[1:])} "
                f"and output {tuple(model.outputs[0].shape[1:])}."
            )
        return model, 0.0, f"loaded from {args.fp_model}"
    ckpt = args.checkpoint_dir
    settings = _fp_settings(args)
    if ckpt is not None:
        os.makedirs(ckpt, exist_ok=True)
        settings_path = os.path.join(ckpt, FP_SETTINGS)
        if os.path.exists(settings_path):
            with open(settings_path) as f:
                saved = json.load(f)
            if saved != settings:
                raise ValueError(
                    f"--checkpoint-dir {ckpt!r} holds a run with other full-precision "
                    f"settings ({saved}); this run has {settings}. Use another directory or "
                    "delete this one to start over."
                )
        else:
            with open(settings_path, "w") as f:
                json.dump(settings, f, indent=1)
        path = os.path.join(ckpt, FP_CHECKPOINT)
        if os.path.exists(path):
            return keras.saving.load_model(path, compile=False), 0.0, f"resumed from {path}"
    model = build_model(args.width, args.blocks)
    start = time.perf_counter()
    pretrain(
        model,
        train,
        args.fp_epochs,
        lr=args.fp_learning_rate,
        momentum=args.fp_momentum,
        weight_decay=args.fp_weight_decay,
        backup_dir=None if ckpt is None else os.path.join(ckpt, FP_BACKUP),
        verbose=verbose,
    )
    seconds = time.perf_counter() - start
    if ckpt is not None:
        tmp = os.path.join(ckpt, ".fp.tmp.keras")
        model.save(tmp)
        os.replace(tmp, os.path.join(ckpt, FP_CHECKPOINT))
    return model, seconds, f"trained for {args.fp_epochs} epochs"


# ------------------------------------------------------------------------------------------
# Export.


def export_lce(fp, bnn, x_sample, out):
    """Convert to an LCE flatbuffer (and a float TFLite for size), check parity with LCE.

    Returns:
        The report fields: sizes, op counts, ``LceBconv2d`` count and parity.
    """
    from bitat_keras import export

    flatbuffer = export.convert_keras_model(bnn)
    export.save_flatbuffer(flatbuffer, os.path.join(out, "bitat.tflite"))
    float_fb = export.convert_float_tflite(fp)
    export.save_flatbuffer(float_fb, os.path.join(out, "fp_float.tflite"))
    info = export.inspect_tflite(flatbuffer)
    diff = export.verify_tflite(bnn, flatbuffer, x_sample)
    scale = float(np.max(np.abs(bnn.predict(x_sample, verbose=0))))
    return {
        "lce_size_bytes": info["size_bytes"],
        "float_tflite_size_bytes": len(float_fb),
        "lce_ops": info["ops"],
        "lce_bconv2d_ops": info["ops"].get(export.BCONV_OP, 0),
        "parity_max_abs_diff": diff,
        "parity_relative": diff / scale if scale else diff,
    }


# ------------------------------------------------------------------------------------------
# The run.


def _history_summary(history):
    return [
        {
            "layer": r["layer"],
            "phase": r["phase"],
            "epochs": r.get("epochs"),
            "val_accuracy": r.get("val_accuracy"),
            "seconds": sum(r["seconds"].values()),
        }
        for r in history
    ]


def run(args):
    """Run the experiment for parsed ``args``; returns the results dict (also written to
    ``<out>/results.json``)."""
    _check_args(args)
    t_start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    verbose = 0 if args.quiet else 2
    config = bitat_config(args)

    _say("loading CIFAR-100 with tensorflow-datasets")
    fp_train = load_data(args, args.fp_batch_size, "train")
    bitat_train = load_data(args, args.batch_size, "train")
    test = load_data(args, args.batch_size, "test")
    n_train = sum(int(y.shape[0]) for _, y in load_data(args, 1024, "train", augment=False))
    n_test = sum(int(y.shape[0]) for _, y in test)
    _say(f"{n_train} train / {n_test} test images of shape {INPUT_SHAPE}, {NUM_CLASSES} classes")

    _say("1/4 full-precision model")
    fp, fp_seconds, fp_source = full_precision_model(args, fp_train, verbose)
    fp_acc = accuracy(fp, test)
    fp.save(os.path.join(args.out, "fp.keras"))
    _say(
        f"    {fp.count_params():,} params, {fp_source}; test accuracy {fp_acc:.2%} "
        f"({fp_seconds:.0f} s)"
    )

    n_layers = len(bk.models.eligible_layers(fp))
    _say(
        f"2/4 BiTAT: {n_layers} layers, {config.epochs_per_layer} quantization + "
        f"{config.finetune_epochs} fine-tune epochs each, batch {config.batch_size}, "
        f"lr {config.learning_rate:g}, lam {config.lam:g}, gamma {config.gamma:g}, "
        f"k {config.groups}"
    )
    result = bk.progressive_fit(
        fp,
        bitat_train,
        config=config,
        validation_data=test,
        checkpoint_dir=(
            None
            if args.checkpoint_dir is None
            else os.path.join(args.checkpoint_dir, BITAT_CHECKPOINT)
        ),
        verbose=verbose,
    )
    bnn = result.model
    bitat_acc = accuracy(bnn, test)
    bnn.save(os.path.join(args.out, "bitat.keras"))
    _say(f"    BiTAT test accuracy {bitat_acc:.2%} ({result.seconds:.0f} s)")

    x_sample = np.concatenate([np.asarray(x) for x, _ in test.take(1)])[:16]
    stats_images = np.concatenate(
        [np.asarray(x) for x, _ in load_data(args, 256, "train", augment=False).take(1)]
    )
    errors = bk.analysis.quantization_errors(fp, bnn, stats_images)
    report = {
        "dataset": DATASET,
        "train_examples": n_train,
        "test_examples": n_test,
        "input_shape": list(INPUT_SHAPE),
        "num_classes": NUM_CLASSES,
        "backend": keras.backend.backend(),
        "width": args.width,
        "blocks": args.blocks,
        "fp_params": int(fp.count_params()),
        "fp_source": fp_source,
        "fp_training": _fp_settings(args),
        "fp_accuracy": fp_acc,
        "fp_train_seconds": fp_seconds,
        "bitat_accuracy": bitat_acc,
        "bitat_seconds": result.seconds,
        "binary_layers": len(binary_conv_layers(bnn)),
        "seconds_per_layer": result.seconds_by_layer(),
        "history": _history_summary(result.history),
        "v_parameters": result.v_parameters,
        "q_orig": errors["q_orig"],
        "q_ours": errors["q_ours"],
        "config": dataclasses.asdict(config),
        "paper_accuracy_percent": PAPER_ACCURACY,
    }
    if args.no_convert:
        _say("3/4 conversion skipped (--no-convert)")
    elif keras.backend.backend() != "tensorflow":
        _say(
            "3/4 LCE conversion needs TensorFlow: run `KERAS_BACKEND=tensorflow bitat-keras "
            f"convert {os.path.join(args.out, 'bitat.keras')} -o bitat.tflite`"
        )
    else:
        _say("3/4 converting with larq-compute-engine; 4/4 parity with the LCE interpreter")
        report.update(export_lce(fp, bnn, x_sample, args.out))
    report["total_seconds"] = time.perf_counter() - t_start
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(format_table(report), flush=True)
    return report


def format_table(r):
    """The final table: our numbers next to the paper's (Table 1, CIFAR-100)."""
    paper = r["paper_accuracy_percent"]
    rows = [
        ("data", f"CIFAR-100, {r['train_examples']} train / {r['test_examples']} test"),
        ("network", f"ReActNet-A MobileNetV1, width {r['width']:g}, {r['blocks']} blocks"),
        ("full-precision accuracy", f"{r['fp_accuracy']:.2%}  (paper {paper['full_precision']} %)"),
        ("BiTAT binary accuracy", f"{r['bitat_accuracy']:.2%}  (paper {paper['bitat']} %)"),
        ("ReActNet-A (paper only)", f"{paper['reactnet_a']} %"),
        ("binary layers", f"{r['binary_layers']}"),
        ("BiTAT time", f"{r['bitat_seconds']:.0f} s"),
        (
            "V entries used / full",
            f"{r['v_parameters']['used']:,} / {r['v_parameters']['full']:,} "
            f"({r['v_parameters']['ratio']:.2%})",
        ),
        ("Q_orig / Q_ours", f"{r['q_orig']:.3g} / {r['q_ours']:.3g}"),
    ]
    if "lce_size_bytes" in r:
        rows += [
            ("LCE flatbuffer", f"{r['lce_size_bytes'] / 1024:.1f} KiB"),
            ("float TFLite (FP)", f"{r['float_tflite_size_bytes'] / 1024:.1f} KiB"),
            ("LceBconv2d ops", f"{r['lce_bconv2d_ops']} of {r['binary_layers']} binary layers"),
            (
                "parity |Keras - LCE|",
                f"{r['parity_max_abs_diff']:.2e} (relative {r['parity_relative']:.1e})",
            ),
        ]
    rows.append(("total time", f"{r['total_seconds']:.0f} s"))
    width = max(len(k) for k, _ in rows)
    lines = ["", "BiTAT on CIFAR-100 (MobileNet)", "-" * (width + 44)]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def main(argv=None):
    """Command-line entry point; returns the exit status (0 ok, 2 data unavailable).

    Bad arguments exit through argparse (status 2, with the usage line).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_args(args)
    except ValueError as err:
        parser.error(str(err))  # exits with status 2 and the usage line
    try:
        run(args)
    except bk.datasets.DatasetUnavailableError as err:
        print(
            "error: CIFAR-100 is not available offline.\n"
            "tensorflow-datasets downloads and prepares it on first use (~160 MB, needs "
            "internet). Run once with internet access, or pass --data-dir pointing at a "
            "tensorflow_datasets folder that already holds cifar100 (for example one "
            'prepared elsewhere with `python -c "import tensorflow_datasets as tfds; '
            "tfds.load('cifar100')\"` and copied here).\n"
            f"Details: {err}",
            file=sys.stderr,
            flush=True,
        )
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
