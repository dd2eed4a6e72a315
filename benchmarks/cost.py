"""What each method costs at an equal number of epochs, in one process, one method after
another: naive STE, ReActNet's two steps, BiTAT at ``BiTATConfig()`` and BiTAT with
``distillation="all"``. Reports total seconds, test accuracy, milliseconds per optimizer
step of every kind of step, BiTAT's per-layer work by kind (in seconds and in training
steps of the same network) and the time from the call to the first optimizer step.

    python benchmarks/cost.py --network cpu --images 20000            # the cpu network's setting
    KERAS_BACKEND=jax python benchmarks/cost.py --network cpu --images 6000
    python benchmarks/cost.py --network full --images 2000
    python benchmarks/cost.py --network cpu --images 6000 --augment   # as users train

``--augment`` trains every method on augmented batches (``cpu_strong``'s shift and flip):
the images differ in every epoch, so the teacher's logits cannot be computed once and every
distilling step runs the teacher.

The epochs of every method are BiTAT's default schedule on the network (L layers x
``epochs_per_layer`` + ``final_epochs``). Results go to ``results/cost_<network>_<backend>``
``.{json,md,png}``; the JSON records the command, the machine and the versions.
"""

import argparse
import os
import sys
import time
import warnings

import figures
import harness  # beside this file: on sys.path when run as a script
import keras
import numpy as np
import render
from render import PER_LAYER_KINDS

import bitat_keras as bk
from bitat_keras import datasets
from bitat_keras.fit import backend, training

# The networks of the presets of the same name (`cpu`: the CPU benchmark's 8 binary convs;
# `full`: the 13-block anchor network, here in batches of 128; `mini`: a seconds-scale smoke
# test for the test suite); the baselines at the `cpu` preset's learning rates, BiTAT at its
# library defaults.
NETWORKS = {
    "cpu": harness.PRESETS["cpu"],
    "full": {**harness.PRESETS["full"], "batch": 128},
    "mini": harness.PRESETS["mini"],
}
BASELINE_LR = harness.PRESETS["cpu"]["baseline_lr"]
FP_LR = 2e-3
METHODS = ("naive_ste", "reactnet", "bitat", "bitat_distill")
STEP_KINDS = {"naive_ste": ("naive_ste",), "reactnet": ("reactnet_step1", "reactnet_step2")}


class StepTimer(keras.callbacks.Callback):
    """Seconds of every batch of every ``fit`` call it sees, and when the first optimizer
    step of all ended (``first``, on the ``time.perf_counter`` clock)."""

    def __init__(self):
        super().__init__()
        self.fits = []
        self.first = None
        self._last = None

    def on_train_begin(self, logs=None):
        self.fits.append([])
        self._last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        self.fits[-1].append(now - self._last)
        self._last = now
        if self.first is None:
            self.first = now

    def on_epoch_end(self, epoch, logs=None):
        self._last = time.perf_counter()

    def summary(self):
        """Per fit: steps, seconds of its first step (tracing included), median and mean
        milliseconds of the others."""
        out = []
        for seconds in self.fits:
            rest = seconds[1:] or seconds
            out.append(
                {
                    "steps": len(seconds),
                    "first_seconds": seconds[0] if seconds else 0.0,
                    "median_ms": 1000.0 * float(np.median(rest)) if rest else 0.0,
                    "mean_ms": 1000.0 * float(np.mean(rest)) if rest else 0.0,
                }
            )
        return out

    def step_ms(self, fit):
        """Median milliseconds of a steady step of fit number ``fit`` (the first batch,
        which traces, left out)."""
        seconds = self.fits[fit][1:] or self.fits[fit]
        return 1000.0 * float(np.median(seconds))


def versions():
    """Keras, the backend's library and numpy, with their versions."""
    import importlib

    backend_name = keras.backend.backend()
    library = importlib.import_module(backend_name)
    return (
        f"keras {keras.__version__}, {backend_name} {library.__version__}, "
        f"numpy {np.__version__}"
    )


def train_fp(model, data, epochs, batch):
    """The pre-trained model: Adam with linear decay, then BatchNorm re-estimated; returns
    the milliseconds of a steady full-precision step."""
    timer = StepTimer()
    x, y = data
    steps = epochs * int(np.ceil(len(x) / batch))
    model.compile(
        keras.optimizers.Adam(training.linear_decay(FP_LR, steps)),
        training.task_loss(),
        jit_compile=backend.jit_compile(),
    )
    model.fit(x, y, epochs=epochs, batch_size=batch, verbose=0, callbacks=[timer])
    starts = range(0, min(20 * batch, len(x)), batch)
    training.recalibrate_batchnorm(model, (x[i : i + batch] for i in starts))
    return timer.step_ms(0)


def bitat_steps(result, timer):
    """ms per step of BiTAT's phases: the quantize phase of the first, middle and last
    layer, and the final phase (the fits line up with the history's records)."""
    quantize = [i for i, h in enumerate(result.history) if h["phase"] == "quantize"]
    out = {}
    for label, i in (
        ("quantize_first", quantize[0]),
        ("quantize_middle", quantize[len(quantize) // 2]),
        ("quantize_last", quantize[-1]),
    ):
        out[label] = timer.step_ms(i)
    finals = [i for i, h in enumerate(result.history) if h["phase"] == "final"]
    if finals:
        out["final"] = timer.step_ms(finals[0])
    return out


def per_layer_work(kinds, layers, step_seconds):
    """BiTAT's seconds outside its optimizer steps (``kinds``: its ``seconds_by_kind()``),
    per layer, by kind, and in steps of ``step_seconds`` (a steady step of the same
    network): ``total`` is the work between steps (statistics, grouping, PCA, BatchNorm
    re-estimation, validation, checkpoints, the rest of the loop), ``compile`` the tracing
    of the phases' steps, apart. The teacher's logits are computed once per run, not per
    layer: ``teacher_seconds`` (and ``teacher_steps``), outside ``total``."""
    seconds = {k: kinds.get(k, 0.0) / layers for k in PER_LAYER_KINDS}
    teacher = kinds.get("teacher", 0.0)
    total = (kinds["overhead"] - kinds["compile"] - teacher) / layers
    return {
        "seconds": seconds,
        "total_seconds": total,
        "steps": {k: v / step_seconds for k, v in seconds.items()},
        "total_steps": total / step_seconds,
        "compile_steps": seconds["compile"] / step_seconds,
        "teacher_seconds": teacher,
        "teacher_steps": teacher / step_seconds,
        "step_seconds": step_seconds,
        "overhead_share": kinds["overhead_share"],
    }


def run_method(method, fp, train, epochs, batch, seed):
    """Train one method from ``fp`` on ``train`` (arrays or augmented batches); returns
    (model, row)."""
    timer = StepTimer()
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    row = {}
    if method in STEP_KINDS:  # a baseline
        model, seconds = harness.BASELINES[method](
            fp,
            train,
            epochs=epochs,
            learning_rate=BASELINE_LR[method],
            batch_size=batch,
            callbacks=[timer],
        )
        row["step_ms"] = {name: timer.step_ms(i) for i, name in enumerate(STEP_KINDS[method])}
    else:
        config = bk.BiTATConfig(
            batch_size=batch,
            seed=seed,
            distillation="all" if method == "bitat_distill" else "none",
        )
        result = bk.progressive_fit(fp, train, config=config, callbacks=[timer], verbose=0)
        model, seconds = result.model, result.seconds
        row["step_ms"] = bitat_steps(result, timer)
        layers = sum(h["phase"] == "quantize" for h in result.history)
        row["seconds_by_kind"] = result.seconds_by_kind()
        row["per_layer"] = per_layer_work(
            row["seconds_by_kind"],
            layers,
            float(np.median([s for f in timer.fits for s in f[1:]])),
        )
        row["traces"] = result.traces
        row["config"] = config.to_dict()
    row["seconds"] = seconds
    row["fits"] = timer.summary()
    row["first_step_seconds"] = timer.first - start
    row["steps"] = int(sum(len(f) for f in timer.fits))
    return model, row


def targets(rows):
    """The cost targets (BiTAT <= 0.9x naive STE, BiTAT with the teacher <= 0.8x ReActNet,
    per-layer work <= 10 steps), as far as these rows measure them."""
    out = {}
    if "bitat" in rows and "naive_ste" in rows:
        ratio = rows["bitat"]["seconds"] / rows["naive_ste"]["seconds"]
        out["bitat_over_naive_ste"] = {"value": ratio, "target": 0.9, "met": ratio <= 0.9}
    if "bitat_distill" in rows and "reactnet" in rows:
        ratio = rows["bitat_distill"]["seconds"] / rows["reactnet"]["seconds"]
        out["bitat_distill_over_reactnet"] = {"value": ratio, "target": 0.8, "met": ratio <= 0.8}
    for method in ("bitat", "bitat_distill"):
        if method in rows:
            steps = rows[method]["per_layer"]["total_steps"]
            out[f"{method}_per_layer_steps"] = {"value": steps, "target": 10, "met": steps <= 10}
    return out


def code_version():
    """The repository's commit (``git describe --always --dirty``), or "unknown"."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=render.HERE,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", choices=sorted(NETWORKS), default="cpu")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--test-images", type=int, default=None)
    parser.add_argument("--fp-epochs", type=int, default=10)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--augment",
        action="store_true",
        help="train the binary methods on augmented batches (cpu_strong's shift and flip)",
    )
    parser.add_argument("--out", default=render.RESULTS)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    settings = NETWORKS[args.network]
    train = datasets.load(settings["dataset"], "train", limit=args.images, seed=0)
    test = datasets.load(settings["dataset"], "test", limit=args.test_images, seed=0)
    shape, classes = train[0].shape[1:], datasets.num_classes(settings["dataset"])
    batch = settings["batch"]
    keras.utils.set_random_seed(args.seed)
    fp = harness.network(settings, shape, classes)
    fp_ms = train_fp(fp, train, args.fp_epochs, batch)
    augment = harness.PRESETS["cpu_strong"]["augment"] if args.augment else None
    data = train
    if augment:
        data = datasets.augmented_batches(*train, batch_size=batch, seed=args.seed, **augment)
    layers = len(bk.models.eligible_layers(fp))
    defaults = bk.BiTATConfig()
    epochs = int(layers * defaults.epochs_per_layer + defaults.final_epochs)
    report = {
        "command": " ".join(["python", "benchmarks/cost.py", *(argv or sys.argv[1:])]),
        "code": code_version(),
        "machine": harness.host(),
        "versions": versions(),
        "backend": keras.backend.backend(),
        "network": args.network,
        "images": len(train[0]),
        "augment": augment,
        "test_images": len(test[0]),
        "batch": batch,
        "layers": layers,
        "epochs": epochs,
        "fp": {"accuracy": training.accuracy(fp, *test), "step_ms": fp_ms},
        "rows": {},
    }
    base = os.path.join(args.out, f"cost_{args.network}_{report['backend']}")
    base += "_augmented" if augment else ""
    for method in args.methods.split(","):
        print(f"[cost] {method}: {epochs} epochs", flush=True)
        model, row = run_method(method, fp, data, epochs, batch, args.seed)
        row["accuracy"] = training.accuracy(model, *test)
        report["rows"][method] = row
        print(f"[cost] {method}: {row['seconds']:.1f} s, {100 * row['accuracy']:.2f} %", flush=True)
        report["targets"] = targets(report["rows"])
        text = render.write_report(report, base)
    print(text)
    figures.cost(report, base + ".png")


if __name__ == "__main__":
    main()
