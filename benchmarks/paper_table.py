"""The paper's comparison on our own runs: accuracy, training cost, V size, Q_orig/Q_ours,
flatbuffer size and CPU latency.

    python benchmarks/paper_table.py --preset quick   # < 30 min on 2 CPU cores
    python benchmarks/paper_table.py --preset full    # the anchor setting (GPU or hours)

Writes benchmarks/results/<preset>.json, <preset>.md and <preset>_accuracy_vs_cost.png.
Every row uses the same network, data, preprocessing, batch size and seeds.
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
from bitat_keras import analysis, baselines, datasets
from bitat_keras.demo import train_full_precision

HERE = os.path.dirname(os.path.abspath(__file__))
ANCHOR_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1))
ABLATIONS = ("none", "intra", "cross", "filter", "aggregated")

PRESETS = {
    # DESIGN.md's anchor: full Fashion-MNIST, ~1.07 M params, batch 256, 15 epochs = 1x.
    "full": dict(
        dataset="fashion_mnist",
        train=None,
        test=None,
        width=1.0,
        blocks=ANCHOR_BLOCKS,
        stem_strides=1,
        batch=256,
        epochs=15,
        lr=1e-3,
        groups=256,
        seeds=3,
        budgets=(1, 2, 4),
        ablation_seeds=3,
        variant_seeds=3,
        latency_runs=200,
    ),
    # Reduced setting for 2-core CPUs.
    "quick": dict(
        dataset="fashion_mnist",
        train=1500,
        test=1000,
        width=0.5,
        blocks=((64, 1), (128, 2)),
        stem_strides=2,
        batch=128,
        fp_epochs=30,  # a converged teacher: 8 epochs of 12 steps left it at ~58 %
        epochs=8,
        lr=1e-3,
        groups=64,
        seeds=3,
        budgets=(1, 2),  # 4x does not fit in 30 min on 2 cores
        ablation_seeds=3,
        variant_seeds=1,
        latency_runs=100,
    ),
    # Seconds-scale smoke test (used by the test suite so the script cannot rot).
    "mini": dict(
        dataset="digits",
        train=192,
        test=96,
        width=0.25,
        blocks=((64, 1),),
        stem_strides=1,
        batch=64,
        epochs=3,
        lr=1e-3,
        groups=8,
        seeds=1,
        budgets=(1,),
        ablation_seeds=1,
        variant_seeds=1,
        latency_runs=5,
    ),
}


def log(msg):
    print(f"[bench] {msg}", flush=True)


def fp_epochs(p):
    """Epochs of the full-precision teacher: the 1x budget unless the preset says more."""
    return p.get("fp_epochs", p["epochs"])


def bitat_schedule(total_epochs, layers):
    """(epochs_per_layer, finetune_epochs) using at most `total_epochs` epochs in all
    (L * e + (L - 1) * f), largest e = f first; at least one epoch per layer."""
    for e in range(max(total_epochs, 1), 0, -1):
        if layers * e + (layers - 1) * e <= total_epochs:
            return e, e
    return 1, 0


def epochs_seen(e, f, layers):
    return layers * e + (layers - 1) * f


class Bench:
    def __init__(self, preset, p, out_dir):
        self.name, self.p, self.out_dir = preset, p, out_dir
        lim = dict(seed=0)
        self.train = datasets.load(p["dataset"], "train", limit=p["train"], **lim)
        self.test = datasets.load(p["dataset"], "test", limit=p["test"], **lim)
        self.shape = self.train[0].shape[1:]
        self.classes = datasets.num_classes(p["dataset"])
        self.rows = {}

    def model(self):
        p = self.p
        return bk.models.reactnet_mobilenet(
            self.shape,
            num_classes=self.classes,
            width_multiplier=p["width"],
            blocks=p["blocks"],
            stem_strides=p["stem_strides"],
        )

    def acc(self, model):
        return baselines.accuracy(model, *self.test)

    def add(self, row, seed, **values):
        self.rows.setdefault(row, {})[seed] = values
        log(
            f"{row} seed {seed}: "
            + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in values.items()
                if not isinstance(v, dict | list)
            )
        )

    def q_values(self, fp, bnn):
        q = analysis.quantization_errors(fp, bnn, self.train[0][:256])
        return {"q_orig": q["q_orig"], "q_ours": q["q_ours"]}

    def bitat(
        self,
        fp,
        seed,
        transform,
        budget,
        distillation="none",
        validate=False,
        act_first=0,
        **overrides,
    ):
        """progressive_fit at ``budget`` times the 1x epochs; ``overrides`` go to the config."""
        p = self.p
        layers = len(bk.models.eligible_layers(fp))
        e, f = bitat_schedule(budget * p["epochs"] - act_first, layers)
        config = bk.BiTATConfig(
            activations_first_epochs=act_first,
            epochs_per_layer=e,
            finetune_epochs=f,
            batch_size=p["batch"],
            learning_rate=p["lr"],
            finetune_learning_rate=p["lr"],
            groups=p["groups"],
            transform=transform,
            distillation=distillation,
            stats_images=256,
            seed=seed,
            **overrides,
        )
        keras.utils.set_random_seed(seed)
        result = bk.progressive_fit(
            fp,
            self.train,
            config=config,
            verbose=0,
            validation_data=self.test if validate else None,
        )
        return result, e, f, layers


def run(preset, out_dir, seeds=None):
    p = dict(PRESETS[preset])
    if seeds is not None:
        p["seeds"] = p["ablation_seeds"] = p["variant_seeds"] = seeds
    b = Bench(preset, p, out_dir)
    started = time.perf_counter()
    log(
        f"preset {preset}: {len(b.train[0])} train / {len(b.test[0])} test {p['dataset']}, "
        f"backend {keras.backend.backend()}"
    )
    fps, deploy = {}, None
    curves = {"reactnet": [], "bitat": []}
    for seed in range(p["seeds"]):
        keras.utils.set_random_seed(seed)
        fp = b.model()
        t = time.perf_counter()
        train_full_precision(fp, b.train, fp_epochs(p), p["batch"], 0)
        b.add(
            "full_precision",
            seed,
            accuracy=b.acc(fp),
            seconds=time.perf_counter() - t,
            epochs=fp_epochs(p),
        )
        fps[seed] = fp

        keras.utils.set_random_seed(seed)
        bnn, secs = baselines.naive_ste(
            fp, b.train, epochs=p["epochs"], learning_rate=p["lr"], batch_size=p["batch"]
        )
        b.add(
            "naive_ste",
            seed,
            accuracy=b.acc(bnn),
            seconds=secs,
            epochs=p["epochs"],
            **b.q_values(fp, bnn),
        )

        for budget in p["budgets"]:
            keras.utils.set_random_seed(seed)
            epochs = budget * p["epochs"]
            bnn, secs = baselines.reactnet_two_step(
                fp, b.train, epochs=epochs, learning_rate=p["lr"], batch_size=p["batch"]
            )
            row = "reactnet" if budget == 1 else f"reactnet_{budget}x"
            b.add(
                row,
                seed,
                accuracy=b.acc(bnn),
                seconds=secs,
                epochs=epochs,
                budget=budget,
                **b.q_values(fp, bnn),
            )
            curves["reactnet"].append((budget, seed, secs, b.acc(bnn)))

        for budget in p["budgets"]:
            validate = seed == 0 and budget == 1
            result, e, f, layers = b.bitat(fp, seed, "aggregated", budget, validate=validate)
            row = "bitat_aggregated" if budget == 1 else f"bitat_aggregated_{budget}x"
            acc = b.acc(result.model)
            b.add(
                row,
                seed,
                accuracy=acc,
                seconds=result.seconds,
                budget=budget,
                epochs=epochs_seen(e, f, layers),
                epochs_per_layer=e,
                finetune_epochs=f,
                v_parameters=result.v_parameters,
                **b.q_values(fp, result.model),
                phases=phase_seconds(result.history),
            )
            curves["bitat"].append((budget, seed, result.seconds, acc))
            if validate:
                b.rows["bitat_aggregated"][seed]["history"] = slim_history(result.history)
            if seed == 0 and budget == 1 and keras.backend.backend() == "tensorflow":
                deploy = deployment(
                    fp, result.model, b.test[0][:1], b.train[0][:64], p["latency_runs"]
                )

        if 2 in p["budgets"] and seed < p["variant_seeds"]:  # beyond the paper (README)
            variants = {
                "bitat_aggregated_distill_2x": dict(distillation="finetune"),
                "bitat_aggregated_actfirst_distill_2x": dict(
                    distillation="all", act_first=p["epochs"] // 2
                ),
            }
            for row, kwargs in variants.items():
                result, e, f, layers = b.bitat(fp, seed, "aggregated", 2, **kwargs)
                b.add(
                    row,
                    seed,
                    accuracy=b.acc(result.model),
                    seconds=result.seconds,
                    budget=2,
                    epochs=epochs_seen(e, f, layers) + kwargs.get("act_first", 0),
                    **b.q_values(fp, result.model),
                )

    for seed in range(p["ablation_seeds"]):
        for transform in ABLATIONS[:-1]:
            result, e, f, layers = b.bitat(fps[seed], seed, transform, 1)
            b.add(
                f"bitat_{transform}",
                seed,
                accuracy=b.acc(result.model),
                seconds=result.seconds,
                budget=1,
                epochs=epochs_seen(e, f, layers),
                v_parameters=result.v_parameters,
                **b.q_values(fps[seed], result.model),
            )

    report = summarize(b, deploy, curves, time.perf_counter() - started)
    write(report, out_dir, preset)
    return report


def phase_seconds(history):
    keys = ("statistics", "grouping", "pca", "quantize", "finetune", "batchnorm", "evaluate")
    out = {k: sum(h["seconds"].get(k, 0.0) for h in history) for k in keys}
    out["compile"] = sum(h.get("compile_seconds", 0.0) for h in history)
    return out


def slim_history(history):
    return [
        {k: h.get(k) for k in ("layer", "phase", "val_accuracy", "penalty", "loss")}
        for h in history
    ]


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
    best = min(out["latency_ms"]["lce_default_1t"], out["latency_ms"]["lce_indirect_bgemm_1t"])
    out["best_lce_option_1t"] = (
        "use_indirect_bgemm=True"
        if best == out["latency_ms"]["lce_indirect_bgemm_1t"]
        else "default"
    )
    out["lce_over_float_latency_1t"] = best / out["latency_ms"]["float_tflite_1t"]
    out["lce_over_float_size"] = out["lce_size_bytes"] / out["float_tflite_size_bytes"]
    return out


def summarize(b, deploy, curves, seconds):
    rows = {}
    for name, per_seed in b.rows.items():
        accs = [v["accuracy"] for v in per_seed.values()]
        first = next(iter(per_seed.values()))
        rows[name] = {
            "accuracy_mean": float(np.mean(accs)),
            "accuracy_min": float(np.min(accs)),
            "accuracy_max": float(np.max(accs)),
            "seeds": len(accs),
            "seconds_mean": float(np.mean([v["seconds"] for v in per_seed.values()])),
            "epochs": first.get("epochs"),
            "v_parameters": first.get("v_parameters"),
            "q_orig_mean": _mean(per_seed, "q_orig"),
            "q_ours_mean": _mean(per_seed, "q_ours"),
            "per_seed": per_seed,
        }
    fp = rows["full_precision"]["accuracy_mean"]
    goals = {
        "bitat_1x_at_least_0.5_above_reactnet": rows["bitat_aggregated"]["accuracy_mean"]
        >= rows["reactnet"]["accuracy_mean"] + 0.005,
        "bitat_within_0.3_of_fp_at_2x_or_less": max(
            rows[r]["accuracy_mean"]
            for r in rows
            if r.startswith("bitat_aggregated") and not r.endswith("4x")
        )
        >= fp - 0.003,
        "moonshot_fp_parity_at_1x": rows["bitat_aggregated"]["accuracy_mean"] >= fp,
        "aggregated_v_at_most_1pct": rows["bitat_aggregated"]["v_parameters"]["ratio"] <= 0.01,
    }
    if deploy:
        goals["lce_at_most_1_20_of_float_size"] = deploy["lce_over_float_size"] <= 1 / 20
        goals["lce_at_most_0.5x_float_latency_1t"] = deploy["lce_over_float_latency_1t"] <= 0.5
    v_full_model = analysis.v_parameter_count(b.model(), groups=b.p["groups"])
    return {
        "preset": b.name,
        "settings": {k: v for k, v in b.p.items()},
        "command": "python benchmarks/paper_table.py " + " ".join(sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "train_size": len(b.train[0]),
        "test_size": len(b.test[0]),
        "rows": rows,
        "deployment": deploy,
        "curves": curves,
        "v_parameter_count_before_training": v_full_model,
        "goals": goals,
        "total_seconds": seconds,
    }


def _mean(per_seed, key):
    values = [v[key] for v in per_seed.values() if key in v]
    return float(np.mean(values)) if values else None


ROW_ORDER = [
    "full_precision",
    "naive_ste",
    "reactnet",
    "reactnet_2x",
    "reactnet_4x",
    "bitat_none",
    "bitat_intra",
    "bitat_cross",
    "bitat_filter",
    "bitat_aggregated",
    "bitat_aggregated_2x",
    "bitat_aggregated_4x",
    "bitat_aggregated_distill_2x",
    "bitat_aggregated_actfirst_distill_2x",
]


def markdown(r):
    lines = [
        f"# Paper table, preset `{r['preset']}`",
        "",
        f"Command: `{r['command']}`  ",
        f"Backend: {r['backend']} (Keras {r['keras']}); "
        f"machine: {r['machine']['platform']}, {r['machine']['cpus']} CPUs; "
        f"data: {r['settings']['dataset']} {r['train_size']} train / {r['test_size']} test; "
        f"total {r['total_seconds'] / 60:.1f} min.",
        "",
        "| row | test acc. mean (min-max) | seeds | train s | epochs | V used / full "
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
            f"{row['epochs']} | {vtxt} | {q(row['q_orig_mean'])} | {q(row['q_ours_mean'])} |"
        )
    if r["deployment"]:
        lines += ["", "## Deployment (seed 0; FP model vs BiTAT model)", ""]
        lines += deployment_markdown(r["deployment"])
    agg = r["rows"]["bitat_aggregated"]["per_seed"][0].get("phases")
    if agg:
        lines += [
            "",
            "## BiTAT phase seconds (aggregated, 1x, seed 0)",
            "",
            ", ".join(f"{k} {v:.1f}" for k, v in agg.items()),
        ]
    lines += ["", "## Goals", ""]
    lines += [f"- {k}: {'holds' if v else 'MISSED'}" for k, v in r["goals"].items()]
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

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, marker in (("reactnet", "o"), ("bitat", "s")):
        pts = r["curves"][name]
        if pts:
            ax.scatter(
                [p[2] for p in pts],
                [100 * p[3] for p in pts],
                marker=marker,
                label={"reactnet": "ReActNet two-step", "bitat": "BiTAT (aggregated)"}[name],
            )
    ax.axhline(
        100 * r["rows"]["full_precision"]["accuracy_mean"],
        color="gray",
        ls="--",
        label="full precision",
    )
    ax.set_xlabel("training seconds")
    ax.set_ylabel("test accuracy (%)")
    budgets = "/".join(f"{b}x" for b in r["settings"]["budgets"])
    ax.set_title(f"Accuracy vs training cost ({r['preset']} preset, {budgets} budgets, all seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(report, out_dir, preset):
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, preset)
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=1, default=float)
    with open(base + ".md", "w") as f:
        f.write(markdown(report))
    plot(report, base + "_accuracy_vs_cost.png")
    log(f"wrote {base}.json, {base}.md, {base}_accuracy_vs_cost.png")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--seeds", type=int, default=None, help="override the seed count")
    args = parser.parse_args(argv)
    report = run(args.preset, args.out, args.seeds)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    raise SystemExit(main())
