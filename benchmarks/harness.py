"""What every benchmark script shares: the settings (``presets.json``: the presets' data,
network and budgets, and the other scripts' grids and sizes), the ``Bench`` runner (data
splits, the network, BiTAT rows scaled to a budget), and the deployment measurements
(sizes, ops, parity, latency). Imported as a module by the scripts beside it (pytest puts
``benchmarks/`` on the path; a script run from ``benchmarks/`` finds it beside itself)."""

import json
import os
import platform
import time

import keras
import numpy as np
import render  # beside this file

import bitat_keras as bk
from bitat_keras import datasets
from bitat_keras.cli.demo import DEMO_BLOCKS
from bitat_keras.fit import baselines, training
from bitat_keras.inspect import analysis

HERE = os.path.dirname(os.path.abspath(__file__))
# Every benchmark's settings, as data: the presets, sweep.py's rows, memory.py's sizes and
# latency.py's networks. Blocks "demo" are the demo's network (bitat_keras.cli.demo); why
# each value was chosen: README.md here and the reports in results/.
with open(os.path.join(HERE, "presets.json")) as f:
    SETTINGS = json.load(f)
for spec in [*SETTINGS["presets"].values(), *SETTINGS["latency"]["networks"].values()]:
    if spec.get("blocks") == "demo":
        spec["blocks"] = DEMO_BLOCKS
PRESETS = SETTINGS["presets"]
# The baselines every benchmark runs, by row name (the names: render.BASELINE_ROWS).
BASELINES = dict(
    zip(
        render.BASELINE_ROWS,
        (
            baselines.naive_ste,
            lambda *a, **k: baselines.naive_ste(*a, distill=True, **k),
            baselines.reactnet_two_step,
        ),
        strict=True,
    )
)


def budget_name(budget):
    """``1`` -> ``""``, ``2`` -> ``"_2x"``, ``0.25`` -> ``"_0.25x"`` (row-name suffixes)."""
    return "" if budget == 1 else f"_{budget:g}x"


def budget_epochs(budget, epochs):
    """Epochs of a baseline at ``budget`` times ``epochs`` (at least 2: ReActNet's steps)."""
    return max(2, int(round(budget * epochs)))


def same_settings(settings, report, ignore):
    """Whether ``report`` (a loaded JSON report) was made with ``settings``, leaving out the
    keys in ``ignore`` (settings that each row records itself)."""
    mine = {k: v for k, v in settings.items() if k not in ignore}
    theirs = {k: v for k, v in report.get("settings", {}).items() if k not in ignore}
    return json.loads(json.dumps(mine)) == theirs


def earlier_report(path, same=lambda report: True):
    """The JSON report at ``path`` when it exists and ``same(report)`` (made with this
    run's settings), else None: what a run merges its new rows into."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        report = json.load(f)
    if same(report):
        return report
    log(f"{path} was made with other settings: starting a new report")
    return None


def network(settings, shape, classes):
    """The ReActNet-style network of ``settings`` (a preset's width, blocks and stem)."""
    return bk.models.reactnet_mobilenet(
        shape,
        num_classes=classes,
        width_multiplier=settings["width"],
        blocks=settings["blocks"],
        stem_strides=settings["stem_strides"],
    )


def teacher_path(folder, preset, seed):
    """The cached teacher of ``preset`` and ``seed`` in ``folder``, without its extension
    (``.keras`` holds the model, ``.json`` its recipe and accuracies)."""
    return os.path.join(folder, f"{preset}_seed{seed}")


def log(msg):
    print(f"[bench] {msg}", flush=True)


def host():
    """The machine a row's seconds were measured on: the kernel release, which tells this
    project's kinds of host apart (their speeds differ about 2.3x; one kind's by up to 1.5x
    between sessions), the CPU model where Linux names it (hosts of one kernel release have
    come with different CPUs), and the CPU count."""
    return ", ".join(filter(None, [platform.release(), cpu_model(), f"{os.cpu_count()} CPUs"]))


def machine_name(report):
    """The machine a report's JSON names: its ``machine`` string (``host()``), or the
    ``platform`` of the dict that earlier reports recorded."""
    machine = report.get("machine", "")
    return machine.get("platform", "") if isinstance(machine, dict) else machine


def cpu_model():
    """The CPU's model name from ``/proc/cpuinfo`` ("" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def scaled_schedule(config, total_epochs, layers):
    """``config`` with its phase lengths scaled (same proportions) so that the whole run
    makes ``total_epochs`` epochs of optimizer steps: activations-first + L quantize +
    (L - 1) fine-tune + final."""
    cost = (
        config.activations_first_epochs
        + layers * config.epochs_per_layer
        + (layers - 1) * config.finetune_epochs
        + config.final_epochs
    )
    scale = total_epochs / cost
    return {
        "activations_first_epochs": config.activations_first_epochs * scale,
        "epochs_per_layer": config.epochs_per_layer * scale,
        "finetune_epochs": config.finetune_epochs * scale,
        "final_epochs": config.final_epochs * scale,
    }


class Bench:
    """Data, network and rows of one preset (``teachers``: the folder of the cached
    teachers, default ``<out_dir>/teachers``)."""

    def __init__(self, preset, settings, out_dir, teachers=None):
        self.name, self.settings, self.out_dir = preset, settings, out_dir
        self.teachers = teachers or os.path.join(out_dir, "teachers")
        limit = None if settings["train"] is None else settings["train"]
        x, y = datasets.load(settings["dataset"], "train", limit=limit, seed=0)
        self.val = (x[-settings["val"] :], y[-settings["val"] :])
        self.train = (x[: -settings["val"]], y[: -settings["val"]])
        self.test = datasets.load(settings["dataset"], "test", limit=settings["test"], seed=0)
        self.shape = x.shape[1:]
        self.classes = datasets.num_classes(settings["dataset"])
        self.rows = {}
        self.curves = {name: [] for name in (*BASELINES, "bitat")}
        self.deploy = None
        self.seconds = 0.0  # wall time of this invocation (run() updates it)
        self.on_row = None  # called after every row (run() saves the report then)

    def model(self):
        return network(self.settings, self.shape, self.classes)

    def binarization_data(self, seed, size=None):
        """What the binary rows train on: the training images, or a class-balanced subset
        of ``size`` (default: the preset's ``subset``, if any) drawn with ``seed``; as
        augmented batches when the preset augments, else as arrays."""
        x, y = self.train
        size = size or self.settings.get("subset")
        if size:
            rows = datasets.balanced_subset(y, size, seed)
            x, y = x[rows], y[rows]
        augment = self.settings.get("augment")
        if not augment:
            return (x, y)
        return datasets.augmented_batches(
            x, y, batch_size=self.settings["batch"], seed=seed, **augment
        )

    def teacher(self, seed):
        """The full-precision model of ``seed``: the preset's teacher recipe, trained once
        and cached in the ``teachers`` folder (with its recipe and accuracies beside it),
        or the plain recipe (Adam, linear decay, ``fp_epochs``) for presets without one.
        Returns ``(model, record)``; ``record`` has the seconds it took to train."""
        settings = self.settings
        recipe = settings.get("teacher")
        keras.utils.set_random_seed(seed)
        model = self.model()
        if recipe is None:
            start = time.perf_counter()
            training.train_full_precision(
                model, self.train, settings["fp_epochs"], settings["batch"], 0, settings["lr"]
            )
            seconds = time.perf_counter() - start
            return model, {"seconds": seconds, "epochs": settings["fp_epochs"], "host": host()}
        folder = self.teachers
        base = teacher_path(folder, self.name, seed)
        key = {"recipe": recipe, "augment": settings.get("augment"), "train": len(self.train[0])}
        if os.path.exists(base + ".json") and os.path.exists(base + ".keras"):
            with open(base + ".json") as f:
                record = json.load(f)
            if record["key"] == key:
                log(f"teacher seed {seed}: cached {base}.keras")
                return keras.saving.load_model(base + ".keras", compile=False), record
        start = time.perf_counter()
        train_teacher(model, self.train, recipe, settings, seed)
        record = {
            "key": key,
            "backend": keras.backend.backend(),  # tensorflow: tf.data batches, else numpy
            "seconds": time.perf_counter() - start,
            "host": host(),
            "epochs": recipe["epochs"],
            "accuracy": self.accuracy(model),
            "val_accuracy": self.accuracy(model, "val"),
            "recipe": (
                "AdamW (decoupled weight decay, not on BatchNorm or biases), cosine decay "
                "from lr to 0, batch of the preset, augmented batches (the preset's shift "
                "and flip), then BatchNorm statistics re-estimated on clean images"
            ),
        }
        os.makedirs(folder, exist_ok=True)
        model.save(base + ".keras")
        with open(base + ".json", "w") as f:
            json.dump(record, f, indent=1)
        return model, record

    def accuracy(self, model, split="test"):
        return training.accuracy(model, *(self.test if split == "test" else self.val))

    def add(self, row, seed, **values):
        """Records one row of one seed; ``host`` (the machine that measured its seconds)
        defaults to this one."""
        values.setdefault("host", host())
        self.rows.setdefault(row, {})[seed] = values
        if self.on_row is not None:
            self.on_row()
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in values.items()
            if not isinstance(v, dict | list)
        )
        log(f"{row} seed {seed}: {shown}")

    def q_values(self, fp, bnn):
        q = analysis.quantization_errors(fp, bnn, self.train[0][:256])
        keys = ("q_orig", "q_ours", "q_orig_fit", "q_ours_fit", "signs_kept")
        return {k: q[k] for k in keys}

    def bitat_config(self, seed, budget, layers, paper=False, size=None, **overrides):
        """BiTAT's defaults (or the paper's method settings) scaled to ``budget``. On
        ``size`` images instead of the preset's subset the epochs shrink in proportion, so
        the run makes the optimizer steps (and takes the time) of ``budget`` on the subset:
        the same time budget, more labelled images."""
        settings = self.settings
        base = bk.BiTATConfig.paper() if paper else bk.BiTATConfig()
        base = bk.BiTATConfig(**{**base.to_dict(), **overrides})
        fields = base.to_dict()
        fields.update(
            batch_size=settings["batch"],
            groups=settings["groups"],
            stats_images=256,
            seed=seed,
            log_gradient_ratio=True,
        )
        epochs = budget * settings["epochs"]
        if size and settings.get("subset"):
            epochs *= settings["subset"] / size
        fields.update(scaled_schedule(base, epochs, layers))
        return bk.BiTATConfig(**fields)

    def bitat(self, fp, seed, budget, paper=False, validate=False, size=None, **overrides):
        layers = len(bk.models.eligible_layers(fp))
        config = self.bitat_config(seed, budget, layers, paper, size, **overrides)
        keras.utils.set_random_seed(seed)
        return bk.progressive_fit(
            fp,
            self.binarization_data(seed, size),
            config=config,
            verbose=0,
            validation_data=self.val if validate else None,
        )

    def bitat_row(self, row, fp, seed, budget, **kwargs):
        result = self.bitat(fp, seed, budget, **kwargs)
        acc = self.accuracy(result.model)
        self.add(
            row,
            seed,
            accuracy=acc,
            val_accuracy=self.accuracy(result.model, "val"),
            seconds=result.seconds,
            budget=budget,
            steps=int(sum(h.get("steps", 0) for h in result.history)),
            v_parameters=result.v_parameters,
            phases=result.seconds_by_kind(),
            gradient_ratio=[h["gradient_ratio"] for h in result.history if "gradient_ratio" in h],
            config=result.config.to_dict(),
            **self.q_values(fp, result.model),
        )
        return result, acc


def train_teacher(model, train, recipe, settings, seed):
    """Train ``model`` in place with the strong-teacher recipe (see ``Bench.teacher``)."""
    x, y = train
    batches = datasets.augmented_batches(
        x, y, batch_size=settings["batch"], seed=seed, **settings["augment"]
    )
    steps = recipe["epochs"] * int(np.ceil(len(x) / settings["batch"]))
    optimizer = keras.optimizers.AdamW(
        keras.optimizers.schedules.CosineDecay(recipe["lr"], steps),
        weight_decay=recipe["weight_decay"],
    )
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    model.compile(optimizer, training.task_loss(), metrics=["accuracy"])
    model.fit(batches, epochs=recipe["epochs"], verbose=0, shuffle=False)  # batches shuffle
    order = np.random.default_rng(0).permutation(len(x))[: 20 * settings["batch"]]
    step = settings["batch"]
    training.recalibrate_batchnorm(
        model, (x[order[i : i + step]] for i in range(0, len(order), step))
    )
    return model


def deployment(fp, bnn, x, calibration, runs):
    """Sizes, LceBconv2d count, parity and latency (every model timed through the same
    interpreter call with each of its options; ``latency.compare``)."""
    from latency import compare, convert_three

    flatbuffers = convert_three(fp, bnn, calibration)
    timing = compare(flatbuffers, x, runs=runs)
    best = timing["best"]
    return {
        "lce_size_bytes": len(flatbuffers["lce"]),
        "float_tflite_size_bytes": len(flatbuffers["float"]),
        "int8_tflite_size_bytes": len(flatbuffers["int8"]),
        "lce_bconv2d_ops": bk.inspect_tflite(flatbuffers["lce"])["ops"].get("LceBconv2d", 0),
        "binary_layers": len(bk.models.eligible_layers(bnn)),
        "parity_max_abs_diff": bk.verify_tflite(bnn, flatbuffers["lce"], x),
        "latency_ms": best,
        "latency_settings_ms": timing["settings"],
        "lce_over_float_latency_1t": best["lce_1t"]["median"] / best["float_1t"]["median"],
        "lce_over_float_size": len(flatbuffers["lce"]) / len(flatbuffers["float"]),
    }
