"""`bitat-keras demo`: FP twin -> BiTAT progressive binarization -> LCE flatbuffer -> parity.

Defaults are sized to finish in under 10 minutes on 2 CPU cores.
"""

import argparse
import json
import os
import time

import keras
import numpy as np

from bitat_keras import datasets, models
from bitat_keras.fit.progressive import progressive_fit
from bitat_keras.fit.training import train_full_precision
from bitat_keras.inspect import analysis
from bitat_keras.method.config import BiTATConfig

DEMO_BLOCKS = ((64, 1), (128, 2), (128, 1))


def build_parser(prog="bitat-keras demo"):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "digits"])
    p.add_argument("--train-size", type=int, default=6000, help="training images (subset)")
    p.add_argument("--test-size", type=int, default=2000, help="test images (subset)")
    p.add_argument("--width", type=float, default=0.75, help="width multiplier of the network")
    p.add_argument("--fp-epochs", type=int, default=10, help="epochs of full-precision training")
    defaults = BiTATConfig()
    p.add_argument(
        "--epochs-per-layer",
        type=float,
        default=defaults.epochs_per_layer,
        help="BiTAT quantization epochs per layer",
    )
    p.add_argument(
        "--finetune-epochs",
        type=float,
        default=defaults.finetune_epochs,
        help="BiTAT fine-tune epochs after each layer",
    )
    p.add_argument(
        "--final-epochs",
        type=float,
        default=defaults.final_epochs,
        help="BiTAT joint phase after the last layer (0: none, as in the paper)",
    )
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument(
        "--learning-rate", type=float, default=defaults.learning_rate, help="BiTAT learning rate"
    )
    p.add_argument(
        "--transform",
        default="aggregated",
        choices=["aggregated", "cross", "intra", "filter", "none"],
    )
    p.add_argument(
        "--groups", type=int, default=defaults.groups, help="k of the k-means aggregation"
    )
    p.add_argument(
        "--lam",
        type=float,
        default=defaults.lam,
        help="weight of the dependency penalty (normalised: a relative output error)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default="bitat_demo", help="where models and results go")
    p.add_argument("--checkpoint-dir", default=None, help="resume BiTAT from here if killed")
    p.add_argument("--no-convert", action="store_true", help="skip the LCE conversion")
    p.add_argument(
        "--plots",
        default=None,
        metavar="DIR",
        help="write the BiTAT figures (V heatmaps, k-means groups, per-layer history, "
        "Q_ours/Q_orig) as PNG files into DIR",
    )
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    return p


def _say(message):
    print(f"[demo] {message}", flush=True)


def _load_data(args):
    name = args.dataset
    if name == "fashion_mnist":
        try:
            source = datasets.fashion_mnist_source()
            _say(f"Fashion-MNIST from {source}")
            x, y = datasets.load(name, "train", limit=args.train_size, seed=args.seed)
            xt, yt = datasets.load(name, "test", limit=args.test_size, seed=args.seed)
            return name, (x, y), (xt, yt)
        except datasets.DatasetUnavailableError as err:
            _say(f"Fashion-MNIST is not available ({err}).")
            _say(
                "Falling back to scikit-learn's digits (8x8). For the real demo data run "
                "`apt-get install dataset-fashion-mnist` or allow Keras' download."
            )
            name = "digits"
    x, y = datasets.load(name, "train", limit=args.train_size, seed=args.seed)
    xt, yt = datasets.load(name, "test", limit=args.test_size, seed=args.seed)
    return name, (x, y), (xt, yt)


def _accuracy(model, data, batch_size):
    x, y = data
    logits = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def run(args):
    t_start = time.perf_counter()
    os.makedirs(args.output_dir, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    name, train, test = _load_data(args)
    shape = train[0].shape[1:]
    classes = datasets.num_classes(name)
    _say(f"{name}: {len(train[0])} train / {len(test[0])} test images of shape {shape}")
    verbose = 0 if args.quiet else 2

    fp = models.reactnet_mobilenet(
        shape,
        num_classes=classes,
        width_multiplier=args.width,
        blocks=DEMO_BLOCKS,
        stem_strides=2 if min(shape[:2]) >= 28 else 1,  # 28x28 -> 14x14: 4x less compute
        name="demo_fp",
    )
    _say(
        f"1/4 training the full-precision twin ({fp.count_params():,} params, "
        f"{args.fp_epochs} epochs)"
    )
    t = time.perf_counter()
    train_full_precision(fp, train, args.fp_epochs, args.batch_size, verbose)
    fp_seconds = time.perf_counter() - t
    fp_acc = _accuracy(fp, test, args.batch_size)
    fp.save(os.path.join(args.output_dir, "fp.keras"))
    _say(f"   full-precision test accuracy {fp_acc:.2%} ({fp_seconds:.0f} s)")

    config = BiTATConfig(
        epochs_per_layer=args.epochs_per_layer,
        finetune_epochs=args.finetune_epochs,
        final_epochs=args.final_epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        finetune_learning_rate=args.learning_rate,
        transform=args.transform,
        groups=args.groups,
        lam=args.lam,
        stats_images=256,
        seed=args.seed,
    )
    n_layers = len(models.eligible_layers(fp))
    _say(f"2/4 BiTAT progressive binarization of {n_layers} layers, bottom to top")
    result = progressive_fit(
        fp,
        train,
        config=config,
        validation_data=test,
        checkpoint_dir=args.checkpoint_dir,
        verbose=verbose,
    )
    bnn = result.model
    bitat_acc = _accuracy(bnn, test, args.batch_size)
    bnn.save(os.path.join(args.output_dir, "bitat.keras"))
    errors = analysis.quantization_errors(fp, bnn, train[0][:256])
    plot_paths = []
    if args.plots:
        from bitat_keras import plots

        plot_paths = plots.save_all(result, args.plots, errors=errors)
        _say(f"   wrote {len(plot_paths)} figures to {args.plots}")

    report = {
        "dataset": name,
        "train_size": len(train[0]),
        "test_size": len(test[0]),
        "backend": keras.backend.backend(),
        "fp_accuracy": fp_acc,
        "bitat_accuracy": bitat_acc,
        "fp_train_seconds": fp_seconds,
        "bitat_seconds": result.seconds,
        "seconds_per_layer": result.seconds_by_layer(),
        "seconds_by_kind": result.seconds_by_kind(),
        "v_parameters": result.v_parameters,
        "q_orig": errors["q_orig"],
        "q_ours": errors["q_ours"],
        "plots": plot_paths,
        "config": config.to_dict(),
    }
    if args.no_convert:
        _say("3/4 conversion skipped (--no-convert)")
    elif keras.backend.backend() != "tensorflow":
        _say(
            "3/4 conversion needs TensorFlow: run `KERAS_BACKEND=tensorflow bitat-keras convert "
            f"{os.path.join(args.output_dir, 'bitat.keras')} -o bitat.tflite`"
        )
    else:
        report.update(_convert(fp, bnn, test[0], args.output_dir))
    report["total_seconds"] = time.perf_counter() - t_start
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(format_table(report), flush=True)
    return report


def _convert(fp, bnn, x_test, output_dir):
    from bitat_keras import export

    _say("3/4 converting with larq-compute-engine")
    lce = export.convert_keras_model(bnn)
    export.save_flatbuffer(lce, os.path.join(output_dir, "bitat.tflite"))
    float_fb = export.convert_float_tflite(fp)
    export.save_flatbuffer(float_fb, os.path.join(output_dir, "fp_float.tflite"))
    info = export.inspect_tflite(lce)
    _say("4/4 parity: Keras vs the LCE interpreter")
    sample = x_test[:16]
    diff = export.verify_tflite(bnn, lce, sample)
    scale = float(np.max(np.abs(bnn.predict(sample, verbose=0))))
    return {
        "lce_size_bytes": info["size_bytes"],
        "float_tflite_size_bytes": len(float_fb),
        "lce_bconv2d_ops": info["ops"].get(export.BCONV_OP, 0),
        "binary_layers": len(export.binary_conv_layers(bnn)),
        "parity_max_abs_diff": diff,
        "parity_relative": diff / scale if scale else diff,
    }


def _phases(seconds_per_layer):
    """'8 layers and the joint phase': the history's layer "*" is a phase over all layers."""
    layers = sum(1 for name in seconds_per_layer if name != "*")
    joint = " and the joint phase" if "*" in seconds_per_layer else ""
    return f"{layers} layer{'s' if layers != 1 else ''}{joint}"


def format_table(r):
    rows = [
        ("dataset", f"{r['dataset']} ({r['train_size']} train / {r['test_size']} test)"),
        ("full-precision accuracy", f"{r['fp_accuracy']:.2%}"),
        ("BiTAT binary accuracy", f"{r['bitat_accuracy']:.2%}"),
        ("BiTAT time", f"{r['bitat_seconds']:.0f} s over {_phases(r['seconds_per_layer'])}"),
        (
            "loop overhead",
            f"{r['seconds_by_kind']['overhead']:.0f} s "
            f"({r['seconds_by_kind']['overhead_share']:.1%}: statistics, k-means, PCA, "
            "BatchNorm, validation, tracing)",
        ),
        (
            "V entries used / full",
            f"{r['v_parameters']['used']:,} / "
            f"{r['v_parameters']['full']:,} "
            f"({r['v_parameters']['ratio']:.2%})",
        ),
        ("Q_orig / Q_ours", f"{r['q_orig']:.3g} / {r['q_ours']:.3g}"),
    ]
    if "lce_size_bytes" in r:
        rows += [
            ("LCE flatbuffer", f"{r['lce_size_bytes'] / 1024:.1f} KiB"),
            (
                "float TFLite (FP model)",
                f"{r['float_tflite_size_bytes'] / 1024:.1f} KiB "
                f"({r['float_tflite_size_bytes'] / r['lce_size_bytes']:.1f}x)",
            ),
            ("LceBconv2d ops", f"{r['lce_bconv2d_ops']} of {r['binary_layers']} binary layers"),
            (
                "parity |Keras - LCE|",
                f"{r['parity_max_abs_diff']:.2e} " f"(relative {r['parity_relative']:.1e})",
            ),
        ]
    rows.append(("total time", f"{r['total_seconds']:.0f} s"))
    width = max(len(k) for k, _ in rows)
    lines = ["", "bitat-keras demo results", "-" * (width + 40)]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append(
        "per-layer seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in r["seconds_per_layer"].items())
    )
    return "\n".join(lines)


def main(argv=None, prog="bitat-keras demo"):
    args = build_parser(prog).parse_args(argv)
    run(args)
    return 0
