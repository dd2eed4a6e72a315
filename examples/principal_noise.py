"""Fig. 3 of the BiTAT paper: noise along the top vs bottom principal components of each
layer's input, added layer-independently or progressively (bottom to top).

For each binarizable conv layer l with kernel W (reshaped to d x c_out, d = kh*kw*c_in), the
principal components V of its im2col input patches (Eq. 10) give the transformed weights
W~ = V^T W (Eq. 4). Gaussian noise is added to the top-n rows of W~ (highest input
variance) or to the bottom-n rows (lowest), i.e. W <- W + V[:, rows] N, N ~ N(0, sigma^2)
with sigma = noise scale * std(W). Two ways (paper appendix 7.3):

- independent (dashed in the paper): V of every layer from the clean network's inputs;
- progressive (solid): layer by layer from the bottom, V of layer l from the inputs of
  the network whose lower layers are already perturbed (Eq. 5).

The same noise draws are used for top/bottom and both modes, so the curves differ only in the
basis. Expect: top-n noise hurts accuracy as the scale grows, bottom-n noise barely does.

Usage (writes principal_noise.png and principal_noise.json into --out):

    python examples/principal_noise.py --out principal_noise
    python examples/principal_noise.py --dataset digits --train-size 1000 --fp-epochs 10
    python examples/principal_noise.py --model bitat_demo/fp.keras   # the demo's FP model
"""

import argparse
import json
import logging
import os
import time

import keras
import numpy as np
from keras import ops

from bitat_keras import datasets, models
from bitat_keras.fit.training import train_full_precision
from bitat_keras.method import transform
from bitat_keras.method.statistics import patch_rows

DIRECTIONS = ("top", "bottom")
MODES = ("independent", "progressive")
BLOCKS = ((64, 1), (128, 2), (128, 1))  # the demo's small ReActNet-A MobileNetV1


def _block(text):
    try:
        filters, strides = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"received {text!r}, expected filters:strides such as 64:1"
        ) from None
    return filters, strides


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "digits"])
    p.add_argument("--model", default=None, help="a pre-trained FP .keras model (skips training)")
    p.add_argument("--train-size", type=int, default=6000, help="training images (subset)")
    p.add_argument("--test-size", type=int, default=1000, help="test images for the accuracy")
    p.add_argument("--width", type=float, default=0.5, help="width multiplier of the network")
    p.add_argument(
        "--blocks",
        type=_block,
        nargs="+",
        default=list(BLOCKS),
        help="the network's blocks as filters:strides (default: 64:1 128:2 128:1)",
    )
    p.add_argument("--fp-epochs", type=int, default=4, help="epochs of full-precision training")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=[0.1, 0.3, 1.0, 3.0, 10.0, 30.0],
        help="noise std as a multiple of each layer's weight std",
    )
    p.add_argument("--components", type=int, default=5, help="n top/bottom components")
    p.add_argument("--repeats", type=int, default=2, help="noise draws per point (averaged)")
    p.add_argument("--stats-images", type=int, default=256, help="images for the statistics")
    p.add_argument("--max-rows", type=int, default=4096, help="im2col rows kept per layer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="principal_noise", help="folder for the .png and .json")
    p.add_argument("--quiet", action="store_true", help="no training progress")
    return p


def _say(message):
    print(f"[principal_noise] {message}", flush=True)


def load_data(name, train_size, test_size, seed):
    """(name actually used, (x, y), (x_test, y_test)); Fashion-MNIST falls back to digits."""
    if name == "fashion_mnist":
        try:
            train = datasets.load(name, "train", limit=train_size, seed=seed)
            test = datasets.load(name, "test", limit=test_size, seed=seed)
            return name, train, test
        except datasets.DatasetUnavailableError as err:
            _say(f"Fashion-MNIST is not available ({err}); using scikit-learn's digits.")
            name = "digits"
    train = datasets.load(name, "train", limit=train_size, seed=seed)
    test = datasets.load(name, "test", limit=test_size, seed=seed)
    return name, train, test


def principal_basis(model, layer_name, images, *, max_rows=4096, seed=0):
    """s and V of Eq. 10 for one layer: PCA of the full-precision inputs its kernel sees.

    Returns:
        (s, v): s (d,) in decreasing order, v (d, d) with the components as columns.
    """
    layer = model.get_layer(layer_name)
    rows = patch_rows(model, layer, images, binarized=False, max_rows=max_rows, seed=seed)
    return transform.pca_init(transform.second_moment(rows))


def component_rows(d, n, direction):
    """Indices of the top-n (largest variance) or bottom-n rows of W~ = V^T W."""
    if direction == "top":
        return np.arange(n)
    if direction == "bottom":
        return np.arange(d - n, d)
    raise ValueError(f"Received direction={direction!r}, expected one of {DIRECTIONS}.")


def _noise(seed, repeat, index, n, cout):
    """Standard normal draws shared by every direction, mode and scale (common numbers)."""
    rng = np.random.default_rng([seed, repeat, index])
    return rng.standard_normal((n, cout)).astype("float32")


def perturb(
    model,
    layer_names,
    images,
    *,
    components,
    direction,
    scale,
    mode,
    clean_std,
    bases=None,
    seed=0,
    repeat=0,
    max_rows=4096,
):
    """Add noise along ``direction`` components to every layer of ``layer_names``, in place.

    Args:
        model: the model; its kernels are changed.
        layer_names: the layers, bottom to top.
        images: inputs for the layer statistics.
        components: n; capped at d // 2 for each layer so top and bottom never overlap.
        direction: "top" or "bottom".
        scale: the noise std is ``scale * clean_std[name]``.
        mode: "independent" (``bases`` from the clean network, computed here if None) or
            "progressive" (each layer's basis from the model as perturbed so far).
        clean_std: {name: std of the clean kernel}.
        bases: optional {name: (s, v)} of the clean network (independent mode).

    Returns:
        {name: {"delta": the kernel change (kh, kw, cin, cout), "basis": the chosen
        columns of V (d, n), "n": n, "d": d}}.
    """
    if mode not in MODES:
        raise ValueError(f"Received mode={mode!r}, expected one of {MODES}.")
    if mode == "independent" and bases is None:
        bases = {
            name: principal_basis(model, name, images, max_rows=max_rows, seed=seed)
            for name in layer_names
        }
    out = {}
    for index, name in enumerate(layer_names):
        layer = model.get_layer(name)
        if mode == "progressive":  # statistics of the network perturbed below this layer
            _, v = principal_basis(model, name, images, max_rows=max_rows, seed=seed)
        else:
            _, v = bases[name]
        shape = tuple(layer.kernel.shape)
        d, cout = int(np.prod(shape[:3])), shape[3]
        n = min(components, d // 2)
        basis = ops.convert_to_tensor(v[:, component_rows(d, n, direction)], dtype="float32")
        noise = _noise(seed, repeat, index, n, cout) * np.float32(scale * clean_std[name])
        # Noise on rows of W~ = V^T W (Eq. 4) is V[:, rows] @ N on W itself.
        delta = ops.reshape(ops.matmul(basis, ops.convert_to_tensor(noise)), shape)
        layer.kernel.assign(ops.add(layer.kernel, delta))
        out[name] = {
            "delta": ops.convert_to_numpy(delta),
            "basis": ops.convert_to_numpy(basis),
            "n": n,
            "d": d,
        }
    return out


def predict_logits(model, x, batch_size=256):
    return ops.convert_to_numpy(model.predict(x, batch_size=batch_size, verbose=0))


def score(logits, y, reference):
    """Accuracy and the relative output change ||logits - reference||_F / ||reference||_F."""
    accuracy = float(np.mean(np.argmax(logits, axis=-1) == y))
    change = float(np.linalg.norm(logits - reference) / max(np.linalg.norm(reference), 1e-12))
    return accuracy, change


def run_experiment(
    model,
    stats_images,
    test,
    *,
    scales,
    components=5,
    repeats=1,
    seed=0,
    max_rows=4096,
    batch_size=256,
    log=None,
):
    """Every (scale, direction, mode) point, averaged over ``repeats`` noise draws.

    The model's weights are restored at the end.

    Returns:
        A dict: clean_accuracy, layers {name: {"d", "n"}}, and results, a list of
        {"scale", "direction", "mode", "accuracy", "accuracy_drop", "output_change",
        "accuracies"} in the order scales x directions x modes.
    """
    x_test, y_test = test
    names = models.eligible_layers(model)
    if not names:
        raise ValueError(f"Model {model.name!r} has no binarizable conv layer to perturb.")
    clean = model.get_weights()
    clean_std = {n: float(np.std(ops.convert_to_numpy(model.get_layer(n).kernel))) for n in names}
    reference = predict_logits(model, x_test, batch_size)
    clean_accuracy, _ = score(reference, y_test, reference)
    bases = {
        n: principal_basis(model, n, stats_images, max_rows=max_rows, seed=seed) for n in names
    }
    layers = {}
    results = []
    try:
        for scale in scales:
            for direction in DIRECTIONS:
                for mode in MODES:
                    accuracies, changes = [], []
                    for repeat in range(repeats):
                        model.set_weights(clean)
                        info = perturb(
                            model,
                            names,
                            stats_images,
                            components=components,
                            direction=direction,
                            scale=scale,
                            mode=mode,
                            clean_std=clean_std,
                            bases=bases,
                            seed=seed,
                            repeat=repeat,
                            max_rows=max_rows,
                        )
                        layers = {k: {"d": v["d"], "n": v["n"]} for k, v in info.items()}
                        logits = predict_logits(model, x_test, batch_size)
                        acc, change = score(logits, y_test, reference)
                        accuracies.append(acc)
                        changes.append(change)
                    row = {
                        "scale": float(scale),
                        "direction": direction,
                        "mode": mode,
                        "accuracy": float(np.mean(accuracies)),
                        "accuracy_drop": clean_accuracy - float(np.mean(accuracies)),
                        "output_change": float(np.mean(changes)),
                        "accuracies": accuracies,
                    }
                    results.append(row)
                    if log:
                        log(
                            f"scale {scale:g} {direction}-{components} {mode}: accuracy "
                            f"{row['accuracy']:.4f}, output change {row['output_change']:.3f}"
                        )
    finally:
        model.set_weights(clean)
    return {"clean_accuracy": clean_accuracy, "layers": layers, "results": results}


def format_table(report):
    n = report["components"]
    heads = [f"{d}-{n} {m[:5]}." for d in DIRECTIONS for m in MODES]
    lines = [
        f"clean accuracy {report['clean_accuracy']:.4f} ({report['dataset']}, "
        f"{report['test_size']} test images, {len(report['layers'])} layers)",
        "accuracy (output change ||dlogits|| / ||logits||) per noise scale:",
        f"{'scale':>8}  " + "  ".join(f"{h:>18}" for h in heads),
    ]
    by_key = {(r["scale"], r["direction"], r["mode"]): r for r in report["results"]}
    for scale in report["scales"]:
        cells = []
        for d in DIRECTIONS:
            for m in MODES:
                r = by_key[(float(scale), d, m)]
                cells.append(f"{r['accuracy']:.4f} ({r['output_change']:.3f})")
        lines.append(f"{scale:>8g}  " + "  ".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


def plot(report, path):
    """Accuracy and output change against the noise scale (log x), as in the paper's Fig. 3:
    red = top-n, blue = bottom-n, solid = progressive, dashed = independent."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    acc_ax, out_ax = fig.subplots(1, 2)
    n = report["components"]
    for direction, color in (("top", "tab:red"), ("bottom", "tab:blue")):
        # Solid = progressive, dashed = independent (as in the paper); hollow squares keep
        # the independent points visible where both modes coincide.
        for mode, style, marker in (("progressive", "-", "o"), ("independent", "--", "s")):
            rows = [
                r for r in report["results"] if r["direction"] == direction and r["mode"] == mode
            ]
            scales = [r["scale"] for r in rows]
            label = f"{direction}-{n}, {mode}"
            hollow = marker == "s"
            look = dict(
                color=color,
                marker=marker,
                label=label,
                markersize=9 if hollow else 5,
                markerfacecolor="none" if hollow else color,
            )
            acc_ax.plot(scales, [r["accuracy"] for r in rows], style, **look)
            out_ax.plot(scales, [r["output_change"] for r in rows], style, **look)
    acc_ax.axhline(report["clean_accuracy"], color="grey", linestyle=":", label="no noise")
    for ax in (acc_ax, out_ax):
        ax.set_xscale("log")
        ax.set_xlabel("noise scale (std / layer weight std)")
        ax.grid(alpha=0.3)
    out_ax.set_yscale("log")
    acc_ax.set_ylabel("test accuracy")
    out_ax.set_ylabel("||logits' - logits|| / ||logits||")
    acc_ax.legend(fontsize=8)
    acc_ax.set_title("Noise on principal components of each layer's input (Fig. 3)")
    out_ax.set_title(f"Output change ({report['dataset']}, {len(report['layers'])} layers)")
    fig.savefig(path, dpi=130)
    return fig


def _check_args(args):
    if args.fp_epochs < 0:
        raise SystemExit(f"--fp-epochs must be >= 0, received {args.fp_epochs}")
    for name in ("train_size", "test_size", "stats_images", "components", "repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(
                f"--{name.replace('_', '-')} must be >= 1, received {getattr(args, name)}"
            )
    if any(not s > 0 for s in args.scales):
        raise SystemExit(f"--scales must be > 0, received {args.scales}")


def run(args):
    _check_args(args)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # patch_rows builds sub-models
    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    name, train, test = load_data(args.dataset, args.train_size, args.test_size, args.seed)
    shape = train[0].shape[1:]
    if args.model:
        model = keras.saving.load_model(args.model)
        _say(f"loaded {args.model} ({model.count_params():,} params)")
    else:
        model = models.reactnet_mobilenet(
            shape,
            num_classes=datasets.num_classes(name),
            width_multiplier=args.width,
            blocks=args.blocks,
            stem_strides=2 if min(shape[:2]) >= 28 else 1,
            name="principal_noise_fp",
        )
        if args.fp_epochs:
            _say(f"training the FP model on {len(train[0])} {name} images, {args.fp_epochs} epochs")
            verbose = 0 if args.quiet else 2
            train_full_precision(model, train, args.fp_epochs, args.batch_size, verbose)
        else:
            _say("--fp-epochs 0: the network keeps its random initialisation")
    order = np.random.default_rng(args.seed).permutation(len(train[0]))[: args.stats_images]
    stats_images = train[0][np.sort(order)]
    report = run_experiment(
        model,
        stats_images,
        test,
        scales=args.scales,
        components=args.components,
        repeats=args.repeats,
        seed=args.seed,
        max_rows=args.max_rows,
        batch_size=args.batch_size,
        log=None if args.quiet else _say,
    )
    report = {
        "dataset": name,
        "train_size": len(train[0]),
        "test_size": len(test[0]),
        "backend": keras.backend.backend(),
        "seed": args.seed,
        "components": args.components,
        "scales": [float(s) for s in args.scales],
        "repeats": args.repeats,
        "noise": "sigma = scale * std(W) per layer, on rows of V^T W (Eq. 4)",
        **report,
        "seconds": time.perf_counter() - start,
    }
    os.makedirs(args.out, exist_ok=True)
    report["json"] = os.path.join(args.out, "principal_noise.json")
    report["figure"] = os.path.join(args.out, "principal_noise.png")
    plot(report, report["figure"])
    with open(report["json"], "w") as f:
        json.dump(report, f, indent=1)
    print(format_table(report), flush=True)
    _say(f"wrote {report['figure']} and {report['json']} ({report['seconds']:.0f} s)")
    return report


def main(argv=None):
    """Parse ``argv`` (None: the command line), run, and return the report dict."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
