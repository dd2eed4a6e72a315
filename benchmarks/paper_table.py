"""The paper's comparison on our own runs: accuracy against training wall time, V sizes,
Q_orig/Q_ours, flatbuffer size and CPU latency.

    python benchmarks/paper_table.py --preset cpu            # the CPU headline (hours)
    python benchmarks/paper_table.py --preset cpu --seed 1   # one seed, merged into cpu.json
    python benchmarks/paper_table.py --preset full           # the anchor setting (GPU, JAX)
    python benchmarks/paper_table.py --preset mini           # seconds (the test suite)

Every row uses the same network, data, preprocessing, batch size and seeds. Budgets are
wall-clock: 1x is ReActNet's training time at its converged epoch count; BiTAT at Nx gets N
times ReActNet's optimizer steps (its step costs what ReActNet's costs: both run the
full-precision teacher), and every row reports the seconds it actually took. Writes
benchmarks/results/<preset>.json, <preset>.md and <preset>_accuracy_vs_cost.png.
"""

import argparse
import json
import os
import platform
import sys
import time

import keras
import numpy as np

import bitat_keras as bk
from bitat_keras import analysis, baselines, datasets, training

HERE = os.path.dirname(os.path.abspath(__file__))
ANCHOR_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1))
DEMO_BLOCKS = ((64, 1), (128, 2), (128, 1))
ABLATIONS = ("none", "intra", "cross")

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
        # Learning rates of the baselines, the best of 1e-3 ... 8e-3 on the validation split.
        baseline_lr=dict(naive_ste=8e-3, reactnet=4e-3),
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


def log(msg):
    print(f"[bench] {msg}", flush=True)


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
    """Data, network and rows of one preset."""

    def __init__(self, preset, settings, out_dir):
        self.name, self.settings, self.out_dir = preset, settings, out_dir
        s = settings
        limit = None if s["train"] is None else s["train"]
        x, y = datasets.load(s["dataset"], "train", limit=limit, seed=0)
        self.val = (x[-s["val"] :], y[-s["val"] :])
        self.train = (x[: -s["val"]], y[: -s["val"]])
        self.test = datasets.load(s["dataset"], "test", limit=s["test"], seed=0)
        self.shape = x.shape[1:]
        self.classes = datasets.num_classes(s["dataset"])
        self.rows = {}
        self.curves = {"naive_ste": [], "reactnet": [], "bitat": []}
        self.deploy = None
        self.seconds = 0.0  # wall time of this invocation (run() updates it)
        self.on_row = None  # called after every row (run() saves the report then)

    def model(self):
        s = self.settings
        return bk.models.reactnet_mobilenet(
            self.shape,
            num_classes=self.classes,
            width_multiplier=s["width"],
            blocks=s["blocks"],
            stem_strides=s["stem_strides"],
        )

    def accuracy(self, model, split="test"):
        return training.accuracy(model, *(self.test if split == "test" else self.val))

    def add(self, row, seed, **values):
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
        return {"q_orig": q["q_orig"], "q_ours": q["q_ours"]}

    def bitat_config(self, seed, budget, layers, paper=False, **overrides):
        """BiTAT's defaults (or the paper's method settings) scaled to ``budget``."""
        s = self.settings
        base = bk.BiTATConfig.paper() if paper else bk.BiTATConfig()
        base = bk.BiTATConfig(**{**base.to_dict(), **overrides})
        fields = base.to_dict()
        fields.update(batch_size=s["batch"], groups=s["groups"], stats_images=256, seed=seed)
        fields.update(scaled_schedule(base, budget * s["epochs"], layers))
        return bk.BiTATConfig(**fields)

    def bitat(self, fp, seed, budget, paper=False, validate=False, **overrides):
        layers = len(bk.models.eligible_layers(fp))
        config = self.bitat_config(seed, budget, layers, paper, **overrides)
        keras.utils.set_random_seed(seed)
        result = bk.progressive_fit(
            fp, self.train, config=config, verbose=0, validation_data=self.val if validate else None
        )
        return result

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
            phases=phase_seconds(result),
            gradient_ratio=[h["gradient_ratio"] for h in result.history if "gradient_ratio" in h],
            **self.q_values(fp, result.model),
        )
        return result, acc


def run_seed(bench, seed, groups, overrides=None):
    """Every row of one seed (``groups``: which rows beyond the main ones; ``overrides``:
    BiTATConfig fields for the main BiTAT rows instead of the library defaults)."""
    s = bench.settings
    overrides = overrides or {}
    keras.utils.set_random_seed(seed)
    fp = bench.model()
    start = time.perf_counter()
    training.train_full_precision(fp, bench.train, s["fp_epochs"], s["batch"], 0, s["lr"])
    bench.add(
        "full_precision",
        seed,
        accuracy=bench.accuracy(fp),
        val_accuracy=bench.accuracy(fp, "val"),
        seconds=time.perf_counter() - start,
        epochs=s["fp_epochs"],
    )
    steps_per_epoch = int(np.ceil(len(bench.train[0]) / s["batch"]))
    for budget in s["budgets"]:
        if budget == 4 and "budget4" not in groups:
            continue
        epochs = budget * s["epochs"]
        for name, method in (
            ("naive_ste", baselines.naive_ste),
            ("reactnet", baselines.reactnet_two_step),
        ):
            if name == "naive_ste" and budget > 1:
                continue
            keras.utils.set_random_seed(seed)
            bnn, seconds = method(
                fp,
                bench.train,
                epochs=epochs,
                learning_rate=s["baseline_lr"][name],
                batch_size=s["batch"],
            )
            acc = bench.accuracy(bnn)
            bench.add(
                name if budget == 1 else f"{name}_{budget}x",
                seed,
                accuracy=acc,
                val_accuracy=bench.accuracy(bnn, "val"),
                seconds=seconds,
                budget=budget,
                steps=epochs * steps_per_epoch,
                **bench.q_values(fp, bnn),
            )
            bench.curves[name].append((budget, seed, seconds, acc))
        row = "bitat_aggregated" if budget == 1 else f"bitat_aggregated_{budget}x"
        result, acc = bench.bitat_row(
            row, fp, seed, budget, validate=seed == 0 and budget == 1, **overrides
        )
        bench.curves["bitat"].append((budget, seed, result.seconds, acc))
        if seed == 0 and budget == 1:
            bench.rows[row][seed]["history"] = slim_history(result.history)
            if keras.backend.backend() == "tensorflow" and "deploy" in groups:
                bench.deploy = deployment(
                    fp, result.model, bench.test[0][:1], bench.train[0][:64], s["latency_runs"]
                )
    if "extra" in groups:
        bench.bitat_row("bitat_paper", fp, seed, 1, paper=True)
        for transform in ABLATIONS:
            bench.bitat_row(f"bitat_{transform}", fp, seed, 1, transform=transform)


def phase_seconds(result):
    out = {}
    for h in result.history:
        for k, v in h["seconds"].items():
            out[k] = out.get(k, 0.0) + v
        out["compile"] = out.get("compile", 0.0) + h.get("compile_seconds", 0.0)
    train = sum(out.get(k, 0.0) for k in ("activations", "quantize", "finetune", "final"))
    out["overhead"] = result.seconds - train + out["compile"]
    out["overhead_share"] = out["overhead"] / result.seconds if result.seconds else 0.0
    return out


def slim_history(history):
    keys = ("layer", "phase", "steps", "val_accuracy", "penalty", "gradient_ratio", "loss")
    return [{k: h.get(k) for k in keys} for h in history]


def deployment(fp, bnn, x, calibration, runs):
    from latency import median_latency_ms

    from bitat_keras import export

    lce = export.convert_keras_model(bnn)
    flt = export.convert_float_tflite(fp)
    int8 = export.convert_float_tflite(fp, int8=True, representative_data=calibration)
    out = {
        "lce_size_bytes": len(lce),
        "float_tflite_size_bytes": len(flt),
        "int8_tflite_size_bytes": len(int8),
        "lce_bconv2d_ops": bk.inspect_tflite(lce)["ops"].get("LceBconv2d", 0),
        "binary_layers": len(bk.models.eligible_layers(bnn)),
        "parity_max_abs_diff": bk.verify_tflite(bnn, lce, x),
        "latency_ms": {},
    }
    for threads in (1, 2):
        lat = out["latency_ms"]
        lat[f"float_tflite_{threads}t"] = median_latency_ms(
            flt, x, kind="tflite", threads=threads, runs=runs
        )
        lat[f"int8_tflite_{threads}t"] = median_latency_ms(
            int8, x, kind="tflite", threads=threads, runs=runs
        )
        lat[f"lce_default_{threads}t"] = median_latency_ms(
            lce, x, kind="lce", threads=threads, runs=runs
        )
        lat[f"lce_indirect_bgemm_{threads}t"] = median_latency_ms(
            lce, x, kind="lce", threads=threads, runs=runs, use_indirect_bgemm=True
        )
    lat = out["latency_ms"]
    best = min(lat["lce_default_1t"], lat["lce_indirect_bgemm_1t"])
    out["best_lce_option_1t"] = (
        "use_indirect_bgemm=True" if best == lat["lce_indirect_bgemm_1t"] else "default"
    )
    out["lce_over_float_latency_1t"] = best / lat["float_tflite_1t"]
    out["lce_over_float_size"] = out["lce_size_bytes"] / out["float_tflite_size_bytes"]
    return out


def summarize(bench, previous=None):
    """The report: per-row means over every seed run so far (``previous`` holds the rows
    and curves of seeds run in earlier invocations)."""
    per_row = {}
    curves = {k: [list(p) for p in v] for k, v in bench.curves.items()}
    seconds = 0.0
    if previous:
        for name, row in previous["rows"].items():
            per_row[name] = {int(k): v for k, v in row["per_seed"].items()}
        for name, points in previous["curves"].items():
            curves.setdefault(name, [])
            new = {(b, s) for b, s, _, _ in curves[name]}
            curves[name] = [p for p in points if (p[0], p[1]) not in new] + curves[name]
        seconds = previous.get("total_seconds", 0.0)
    for name, seeds in bench.rows.items():
        per_row.setdefault(name, {}).update(seeds)
    rows = {}
    for name, per_seed in per_row.items():
        accs = [v["accuracy"] for v in per_seed.values()]
        first = next(iter(per_seed.values()))
        rows[name] = {
            "accuracy_mean": float(np.mean(accs)),
            "accuracy_min": float(np.min(accs)),
            "accuracy_max": float(np.max(accs)),
            "val_accuracy_mean": _mean(per_seed, "val_accuracy"),
            "seeds": len(accs),
            "seconds_mean": float(np.mean([v["seconds"] for v in per_seed.values()])),
            "steps": first.get("steps"),
            "v_parameters": first.get("v_parameters"),
            "q_orig_mean": _mean(per_seed, "q_orig"),
            "q_ours_mean": _mean(per_seed, "q_ours"),
            "per_seed": {str(k): v for k, v in sorted(per_seed.items())},
        }
    s = bench.settings
    report = {
        "preset": bench.name,
        "settings": s,
        "command": "python benchmarks/paper_table.py " + " ".join(sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "bitat_defaults": bk.BiTATConfig().to_dict(),
        "train_size": len(bench.train[0]),
        "val_size": len(bench.val[0]),
        "test_size": len(bench.test[0]),
        "rows": rows,
        "deployment": bench.deploy or (previous or {}).get("deployment"),
        "curves": curves,
        "total_seconds": seconds + bench.seconds,
        "notes": (previous or {}).get("notes", []),
    }
    report["goals"] = goals(rows)
    return report


def annotate(preset, out_dir, text):
    """Add a note (e.g. what disturbed a timing) to a preset's report; rerenders it."""
    path = os.path.join(out_dir, f"{preset}.json")
    with open(path) as f:
        report = json.load(f)
    report.setdefault("notes", []).append(text)
    write(report, out_dir, preset, quiet=True)
    return report


def goals(rows):
    def mean(name):
        return rows[name]["accuracy_mean"] if name in rows else None

    fp, rn, naive, bitat = (
        mean(n) for n in ("full_precision", "reactnet", "naive_ste", "bitat_aggregated")
    )
    out = {}
    if None not in (fp, rn, naive, bitat):
        out["bitat_1x_at_least_reactnet_plus_0.5"] = bitat >= rn + 0.005
        out["bitat_1x_at_least_naive_ste"] = bitat >= naive
        best = max(mean(r) for r in ("bitat_aggregated", "bitat_aggregated_2x") if r in rows)
        out["bitat_2x_or_less_within_1.0_of_fp"] = best >= fp - 0.01
        out["moonshot_bitat_1x_within_0.3_of_fp"] = bitat >= fp - 0.003
    if "reactnet_2x" in rows and rn is not None:
        out["reactnet_converged_at_1x (2x gains < 0.3)"] = mean("reactnet_2x") - rn < 0.003
    transforms = [mean(f"bitat_{t}") for t in ("intra", "cross") if f"bitat_{t}" in rows]
    if transforms and "bitat_none" in rows and bitat is not None:
        out["transform_beats_none_by_0.3"] = max([*transforms, bitat]) >= mean("bitat_none") + 0.003
    return out


def _mean(per_seed, key):
    values = [v[key] for v in per_seed.values() if v.get(key) is not None]
    return float(np.mean(values)) if values else None


ROW_ORDER = [
    "full_precision",
    "naive_ste",
    "reactnet",
    "reactnet_2x",
    "reactnet_4x",
    "bitat_aggregated",
    "bitat_aggregated_2x",
    "bitat_aggregated_4x",
    "bitat_paper",
    "bitat_none",
    "bitat_intra",
    "bitat_cross",
]


def markdown(r):
    lines = [
        f"# Paper table, preset `{r['preset']}`",
        "",
        f"Command: `{r['command']}` (seeds run one by one and merged)  ",
        f"Backend: {r['backend']} (Keras {r['keras']}); "
        f"machine: {r['machine']['platform']}, {r['machine']['cpus']} CPUs; "
        f"data: {r['settings']['dataset']} {r['train_size']} train / {r['val_size']} "
        f"validation (held out of the training images) / {r['test_size']} test; "
        f"total wall time {r['total_seconds'] / 60:.1f} min.",
        "",
        "Test accuracy (validation accuracy chose every setting). Budgets: 1x is ReActNet's "
        "time at its converged epoch count; `train s` is the measured wall time.",
        "",
        "| row | test acc. mean (min-max) | seeds | train s | steps | V used / full "
        "| Q_orig | Q_ours |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ROW_ORDER:
        row = r["rows"].get(name)
        if row is None:
            continue
        v = row["v_parameters"]
        vtxt = f"{v['used']:,} / {v['full']:,} ({v['ratio']:.2%})" if v else "-"
        q = lambda x: "-" if x is None else f"{x:.3g}"  # noqa: E731
        lines.append(
            f"| {name} | {row['accuracy_mean']:.2%} ({row['accuracy_min']:.2%}-"
            f"{row['accuracy_max']:.2%}) | {row['seeds']} | {row['seconds_mean']:.0f} | "
            f"{row['steps']} | {vtxt} | {q(row['q_orig_mean'])} | {q(row['q_ours_mean'])} |"
        )
    agg = r["rows"].get("bitat_aggregated", {}).get("per_seed", {}).get("0", {}).get("phases")
    if agg:
        lines += ["", "## BiTAT seconds by kind of work (1x, seed 0)", ""]
        lines.append(", ".join(f"{k} {v:.2f}" for k, v in agg.items()))
    if r["deployment"]:
        lines += ["", "## Deployment (seed 0; FP model vs BiTAT model)", ""]
        lines += deployment_markdown(r["deployment"])
    lines += ["", "## Goals", ""]
    lines += [f"- {k}: {'holds' if v else 'MISSED'}" for k, v in r["goals"].items()]
    if r.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in r["notes"]]
    return "\n".join(lines) + "\n"


def deployment_markdown(d):
    """The deployment lines (sizes, op count, parity, latency table) of ``deployment()``."""
    lines = [
        f"- LCE flatbuffer {d['lce_size_bytes'] / 1024:.1f} KiB; float TFLite "
        f"{d['float_tflite_size_bytes'] / 1024:.1f} KiB; int8 TFLite "
        f"{d['int8_tflite_size_bytes'] / 1024:.1f} KiB (LCE/float = "
        f"{d['lce_over_float_size']:.3f})",
        f"- LceBconv2d ops: {d['lce_bconv2d_ops']} of {d['binary_layers']} binary "
        f"layers; parity max |Keras - LCE| = {d['parity_max_abs_diff']:.2e}",
        "- single-image latency on this CPU, median (ms):",
        "",
        "| model | 1 thread | 2 threads |",
        "|---|---|---|",
    ]
    for key in ("float_tflite", "int8_tflite", "lce_default", "lce_indirect_bgemm"):
        lat = d["latency_ms"]
        lines.append(f"| {key} | {lat[key + '_1t']:.3f} | {lat[key + '_2t']:.3f} |")
    lines += [
        "",
        f"Best LCE option: {d['best_lce_option_1t']}; LCE/float latency at 1 "
        f"thread: {d['lce_over_float_latency_1t']:.2f}x.",
    ]
    return lines


def plot(r, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    labels = {
        "naive_ste": ("naive STE", "^"),
        "reactnet": ("ReActNet two-step", "o"),
        "bitat": ("BiTAT (defaults)", "s"),
    }
    for name, (label, marker) in labels.items():
        points = sorted(r["curves"].get(name, []))
        if not points:
            continue
        budgets = sorted({p[0] for p in points})
        xs = [np.mean([p[2] for p in points if p[0] == b]) for b in budgets]
        ys = [100 * np.mean([p[3] for p in points if p[0] == b]) for b in budgets]
        (line,) = ax.plot(xs, ys, marker=marker, label=label)
        ax.scatter(
            [p[2] for p in points], [100 * p[3] for p in points], s=12, color=line.get_color()
        )
    ax.axhline(
        100 * r["rows"]["full_precision"]["accuracy_mean"],
        color="gray",
        ls="--",
        label="full precision",
    )
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("test accuracy (%)")
    budgets = "/".join(f"{b}x" for b in r["settings"]["budgets"])
    ax.set_title(f"Accuracy vs wall time ({r['preset']} preset, {budgets}; means and seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(report, out_dir, preset, quiet=False):
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, preset)
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=1, default=float)
    with open(base + ".md", "w") as f:
        f.write(markdown(report))
    if "full_precision" in report["rows"]:
        plot(report, base + "_accuracy_vs_cost.png")
    if not quiet:
        log(f"wrote {base}.json, {base}.md, {base}_accuracy_vs_cost.png")


def run(preset, out_dir, seeds=None, groups=("budget4", "extra", "deploy"), **changes):
    """Run ``seeds`` (default: all of the preset's) and merge them into ``out_dir``'s
    report of the preset. ``groups``: the rows beyond the main ones that seed 0 (or the
    preset's ``extra_seeds`` first seeds) also runs. ``changes``: ``budgets`` or
    ``overrides`` (BiTATConfig fields of the main BiTAT rows), recorded in the report."""
    settings = dict(PRESETS[preset])
    overrides = changes.pop("overrides", None) or {}
    settings.update({k: v for k, v in changes.items() if v is not None})
    settings["bitat_overrides"] = overrides
    bench = Bench(preset, settings, out_dir)
    seeds = list(range(settings["seeds"])) if seeds is None else list(seeds)
    log(
        f"preset {preset}: {len(bench.train[0])} train / {len(bench.val[0])} val / "
        f"{len(bench.test[0])} test {settings['dataset']}, backend {keras.backend.backend()}"
    )
    path = os.path.join(out_dir, f"{preset}.json")
    previous = None
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        keep = ("budgets", "bitat_overrides")
        same = {k: v for k, v in settings.items() if k not in keep}
        old = {k: v for k, v in previous.get("settings", {}).items() if k not in keep}
        if json.loads(json.dumps(same)) != old:
            log(f"{path} was made with other preset settings: starting a new report")
            previous = None
    start = time.perf_counter()

    def save():  # after every row, so an interrupted run keeps what it measured
        bench.seconds = time.perf_counter() - start
        report = summarize(bench, previous)
        write(report, out_dir, preset, quiet=True)
        return report

    bench.on_row = save
    for seed in seeds:
        extra = set(groups) if seed < settings["extra_seeds"] else set()
        run_seed(bench, seed, extra, overrides)
    report = save()
    log(f"wrote {os.path.join(out_dir, preset)}.json, .md and _accuracy_vs_cost.png")
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--seed", type=int, action="append", help="run only this seed")
    parser.add_argument(
        "--groups",
        default="budget4,extra,deploy",
        help="rows beyond the main ones (comma list of budget4, extra, deploy)",
    )
    parser.add_argument("--budgets", default=None, help="comma list, e.g. 1,2")
    parser.add_argument(
        "--bitat", default=None, help="JSON of BiTATConfig fields for the main BiTAT rows"
    )
    parser.add_argument(
        "--annotate", default=None, help="only add this note to the existing report"
    )
    args = parser.parse_args(argv)
    if args.annotate:
        annotate(args.preset, args.out, args.annotate)
        return 0
    groups = tuple(g for g in args.groups.split(",") if g)
    budgets = tuple(int(b) for b in args.budgets.split(",")) if args.budgets else None
    overrides = json.loads(args.bitat) if args.bitat else None
    report = run(args.preset, args.out, args.seed, groups, budgets=budgets, overrides=overrides)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
