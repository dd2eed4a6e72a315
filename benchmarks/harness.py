"""What every benchmark script shares: the presets (data, network, budgets), the ``Bench``
runner (data splits, the network, BiTAT rows scaled to a budget), and the deployment
measurements (sizes, ops, parity, latency). Imported as a module by ``paper_table.py``,
``sweep.py`` and ``deployment.py`` (pytest puts ``benchmarks/`` on the path; a script run
from ``benchmarks/`` finds it beside itself)."""

import json
import os
import platform
import time

import keras
import numpy as np

import bitat_keras as bk
from bitat_keras import datasets
from bitat_keras.cli.demo import DEMO_BLOCKS
from bitat_keras.fit import baselines, training
from bitat_keras.inspect import analysis

HERE = os.path.dirname(os.path.abspath(__file__))
ANCHOR_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1))
# The baselines every benchmark runs, by row name.
BASELINES = {
    "naive_ste": baselines.naive_ste,
    "naive_ste_distill": lambda *a, **k: baselines.naive_ste(*a, distill=True, **k),
    "reactnet": baselines.reactnet_two_step,
}
PRESETS = {
    # The CPU headline: 20,000 training images (5,000 more held out for validation), the
    # full test set, 8 binary layers; chosen so that FP reaches 88 % and each BiTAT layer
    # gets at least 300 quantize steps at 1x.
    "cpu": dict(
        dataset="fashion_mnist",
        train=25000,
        val=5000,
        test=None,
        width=1.0,
        blocks=DEMO_BLOCKS,
        stem_strides=2,
        batch=128,
        fp_epochs=15,
        # ReActNet's converged epoch count (1x): on the validation split 2x gains less than
        # 0.3 points over it (results/sweep_cpu*.md).
        epochs=48,
        lr=1e-3,  # the full-precision teacher
        # Learning rates of the baselines, the best on the validation split (naive STE: of
        # 1e-3 ... 32e-3; ReActNet: of 1e-3 ... 8e-3). Rows run before naive STE's 16e-3 was
        # found used 8e-3 (each row records its learning rate).
        baseline_lr=dict(naive_ste=16e-3, reactnet=4e-3),
        groups=64,
        seeds=3,
        budgets=(1, 2, 4),
        extra_seeds=1,  # ablations, 4x and the paper row
        latency_runs=200,
    ),
    # The anchor setting: full Fashion-MNIST, the 1.07 M-param network, 13 binary layers.
    "full": dict(
        dataset="fashion_mnist",
        train=None,
        val=5000,
        test=None,
        width=1.0,
        blocks=ANCHOR_BLOCKS,
        stem_strides=1,
        batch=256,
        fp_epochs=15,
        epochs=15,
        lr=1e-3,  # the full-precision teacher
        baseline_lr=dict(naive_ste=2e-3, reactnet=2e-3),  # validation sweep: 2e-3 > 1e-3
        groups=256,
        seeds=3,
        budgets=(1, 2, 4),
        extra_seeds=1,
        latency_runs=200,
    ),
    # Seconds-scale smoke test (used by the test suite so the script cannot rot).
    "mini": dict(
        dataset="digits",
        train=288,
        val=64,
        test=96,
        width=0.25,
        blocks=((64, 1),),
        stem_strides=1,
        batch=32,
        fp_epochs=3,
        epochs=3,
        lr=1e-3,  # the full-precision teacher
        baseline_lr=dict(naive_ste=2e-3, reactnet=2e-3),  # validation sweep: 2e-3 > 1e-3
        groups=8,
        seeds=1,
        budgets=(1, 2),
        extra_seeds=1,
        latency_runs=5,
    ),
}


# The premise presets. `cpu_strong`: the `cpu` data and network with a strong teacher (the FP
# model trained as a model worth binarizing: augmentation, weight decay, cosine decay,
# epochs chosen on the validation split); the binary rows train on the same augmented
# batches. `lowdata`: little labelled data: the teacher trained on every training image but
# the validation split; every binary row sees only `subset` labelled images (BiTAT once
# more at `subset_extra`, in the steps of its 1x row); budgets are multiples of ReActNet's
# converged time on the subset.
PRESETS["cpu_strong"] = {
    **{k: v for k, v in PRESETS["cpu"].items() if k not in ("fp_epochs", "lr")},
    # The teacher's epochs on the validation split (seed 0): 30 epochs 92.06 %, 60 epochs
    # 93.02 % (cpu's 15-epoch plain recipe: 89.3 %). 120 epochs was not tried (about 50 min).
    "teacher": dict(epochs=60, lr=2e-3, weight_decay=0.05),
    "augment": dict(shift=2, flip=True),
    "goal": dict(over_baseline=0.005, within_fp=0.01),
    # Validation at 1x (results/sweep_cpu_strong.md): naive STE 8e-3 of 4e-3 ... 32e-3,
    # ReActNet 4e-3 of 2e-3 ... 8e-3, naive STE distilled 8e-3 of 4e-3 ... 16e-3.
    "baseline_lr": dict(naive_ste=8e-3, naive_ste_distill=8e-3, reactnet=4e-3),
    "budgets": (0.25, 0.5, 1, 2),
    # BiTAT's settings here, the best measured on this preset's validation split at 1x
    # (results/sweep_cpu_strong.md): lowdata's choice at lr 8e-3, 91.80 % (4e-3: 91.42 %,
    # 16e-3: 91.56 %; the library defaults: 90.64 %).
    "bitat_overrides": dict(
        distillation="all",
        learning_rate=8e-3,
        finetune_learning_rate=8e-3,
        epochs_per_layer=1,
        final_epochs=16,
    ),
}
PRESETS["lowdata"] = {
    **PRESETS["cpu_strong"],
    "train": None,
    "teacher": dict(epochs=30, lr=2e-3, weight_decay=0.05),
    "subset": 2000,
    "subset_extra": 10000,
    "goal": dict(over_baseline=0.02, within_fp=0.03),
    # Learning rates, the best on this preset's validation split (results/sweep_lowdata.md,
    # results/converge_lowdata.md). ReActNet: 4e-3 of 2e-3 ... 8e-3 at 320 epochs (8e-3 led
    # at 160 epochs, so the rate is chosen at the 1x budget, not at 0.5x); naive STE
    # distilled: 4e-3 of 2e-3 ... 32e-3 at 160 epochs; naive STE: 4e-3 of 2e-3 ... 32e-3 at
    # 160 epochs (0.9 points over cpu's 16e-3).
    "baseline_lr": dict(naive_ste=4e-3, naive_ste_distill=4e-3, reactnet=4e-3),
    # ReActNet on the subset at 4e-3 (validation): 86.1 % at 40 epochs, 87.6 at 80, 89.2 at
    # 160, 90.1 at 320, 90.6 at 640, 90.8 at 1280: the first doubling that gains less than
    # 0.3 points starts at 640, ReActNet's converged count and the 1x.
    "epochs": 640,
    # BiTAT's settings, this preset's best on its validation split at 320 epochs
    # (results/sweep_lowdata.md): the teacher's distribution in every phase (+1.8 points
    # over the task loss) and two thirds of the epochs in the joint phase (+1.3), at lr
    # 4e-3. The main BiTAT rows and their ablations use them unless `paper_table.py
    # --bitat` says otherwise.
    "bitat_overrides": {
        **PRESETS["cpu_strong"]["bitat_overrides"],
        "learning_rate": 4e-3,
        "finetune_learning_rate": 4e-3,
    },
}
# The miniature forms of the two presets above, for the test suite.
PRESETS["cpu_strong_mini"] = {
    **PRESETS["mini"],
    "teacher": dict(epochs=3, lr=2e-3, weight_decay=0.05),
    "augment": dict(shift=1, flip=False),
    "goal": dict(over_baseline=0.005, within_fp=0.01),
    "budgets": (0.5, 1),
    "baseline_lr": dict(naive_ste=2e-3, naive_ste_distill=2e-3, reactnet=2e-3),
}
PRESETS["lowdata_mini"] = {
    **PRESETS["cpu_strong_mini"],
    "subset": 96,
    "subset_extra": 160,
    "epochs": 4,
    "bitat_overrides": dict(distillation="all", final_epochs=16),
}


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


def balanced_subset(y, size, seed):
    """Indices of ``size`` samples, class-balanced (counts differ by at most one), seeded."""
    rng = np.random.default_rng([seed, size])
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    order = [i for group in zip(*per_class, strict=False) for i in group]
    if size > len(order):
        raise ValueError(f"Asked for {size} samples; only {len(order)} can be balanced.")
    return np.sort(np.asarray(order[:size]))


def teacher_path(folder, preset, seed):
    """The cached teacher of ``preset`` and ``seed`` in ``folder``, without its extension
    (``.keras`` holds the model, ``.json`` its recipe and accuracies)."""
    return os.path.join(folder, f"{preset}_seed{seed}")


def log(msg):
    print(f"[bench] {msg}", flush=True)


def host():
    """The machine a row's seconds were measured on: the kernel release, which tells this
    project's kinds of host apart (their speeds differ about 2.3x; one kind's by up to 1.5x
    between sessions), and the CPU count."""
    return f"{platform.release()}, {os.cpu_count()} CPUs"


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
        self.curves = {"naive_ste": [], "naive_ste_distill": [], "reactnet": [], "bitat": []}
        self.deploy = None
        self.seconds = 0.0  # wall time of this invocation (run() updates it)
        self.on_row = None  # called after every row (run() saves the report then)

    def model(self):
        settings = self.settings
        return bk.models.reactnet_mobilenet(
            self.shape,
            num_classes=self.classes,
            width_multiplier=settings["width"],
            blocks=settings["blocks"],
            stem_strides=settings["stem_strides"],
        )

    def binarization_data(self, seed, size=None):
        """What the binary rows train on: the training images, or a class-balanced subset
        of ``size`` (default: the preset's ``subset``, if any) drawn with ``seed``; as
        augmented batches when the preset augments, else as arrays."""
        x, y = self.train
        size = size or self.settings.get("subset")
        if size:
            rows = balanced_subset(y, size, seed)
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
