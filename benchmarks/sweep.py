"""Choose BiTAT's defaults and the baselines' learning rates on the validation split.

    python benchmarks/sweep.py --preset cpu     # one seed; the test set is never touched

Every variant starts from the same full-precision model (seed 0) and gets the 1x budget of
the preset (ReActNet's optimizer steps at its 1x epochs); naive STE and ReActNet get their
learning rates chosen the same way. Each BiTAT row keeps the validation accuracy after
every phase, which shows where accuracy is lost. Writes results/sweep_<preset>.json and .md;
the best BiTAT variant is printed as the ``BiTATConfig`` overrides it needs.
"""

import argparse
import json
import os
import sys
import time

import keras

from bitat_keras import baselines, training

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import paper_table as pt  # noqa: E402

# Schedules: proportions of (activations-first, quantize per layer, fine-tune per layer,
# final) epochs, scaled to the budget; each gives every layer at least 2 epochs of
# quantization at the cpu preset's 1x (8 layers, 24 epochs).
SCHEDULES = {
    "paper": dict(
        activations_first_epochs=0, epochs_per_layer=1, finetune_epochs=0.5, final_epochs=0
    ),
    "q+final": dict(
        activations_first_epochs=0, epochs_per_layer=1, finetune_epochs=0.25, final_epochs=2
    ),
    "act+q+final": dict(
        activations_first_epochs=1, epochs_per_layer=1, finetune_epochs=0, final_epochs=2
    ),
    "q+long-final": dict(
        activations_first_epochs=0, epochs_per_layer=1, finetune_epochs=0, final_epochs=4
    ),
}


def _variant(transform="aggregated", schedule="q+final", **overrides):
    return dict(transform=transform, distillation="all", **SCHEDULES[schedule], **overrides)


VARIANTS = {  # in the order they run (a cut-short sweep keeps the first ones)
    "none/q+final": _variant("none"),
    "agg-lam0.3-sign/q+final": _variant(lam=0.3, penalty_gradient="sign"),
    "agg-lam1-sign/q+final": _variant(lam=1.0, penalty_gradient="sign"),
    "agg-lam0.1-sign/q+final": _variant(lam=0.1, penalty_gradient="sign"),
    "none/act+q+final": _variant("none", "act+q+final"),
    "none/paper": _variant("none", "paper"),
    "agg-lam1-latent/q+final": _variant(lam=1.0, penalty_gradient="latent"),
    "cross-lam0.3-sign/q+final": _variant("cross", lam=0.3, penalty_gradient="sign"),
    "intra-lam0.3-sign/q+final": _variant("intra", lam=0.3, penalty_gradient="sign"),
    "none/q+long-final": _variant("none", "q+long-final"),
    "agg-lam0.3-sign/act+q+final": _variant(
        schedule="act+q+final", lam=0.3, penalty_gradient="sign"
    ),
}

LEARNING_RATES = (1e-3, 2e-3)


def run(preset, out_dir, variants=None, baseline_lrs=LEARNING_RATES, budget=1):
    settings = dict(pt.PRESETS[preset])
    bench = pt.Bench(preset, settings, out_dir)
    started = time.perf_counter()
    keras.utils.set_random_seed(0)
    fp = bench.model()
    training.train_full_precision(fp, bench.train, settings["fp_epochs"], settings["batch"])
    rows = {"full_precision": {"val_accuracy": bench.accuracy(fp, "val")}}
    pt.log(f"full precision: val {rows['full_precision']['val_accuracy']:.4f}")
    epochs = budget * settings["epochs"]
    for name, method in (
        ("naive_ste", baselines.naive_ste),
        ("reactnet", baselines.reactnet_two_step),
    ):
        for lr in baseline_lrs:
            keras.utils.set_random_seed(0)
            bnn, seconds = method(
                fp, bench.train, epochs=epochs, learning_rate=lr, batch_size=settings["batch"]
            )
            row = f"{name}_lr{lr:g}"
            rows[row] = {"val_accuracy": bench.accuracy(bnn, "val"), "seconds": seconds}
            pt.log(f"{row}: {rows[row]}")
    layers = None
    for name in variants or VARIANTS:
        overrides = dict(VARIANTS[name])
        result = bench.bitat(fp, 0, budget, validate=True, **overrides)
        layers = layers or len([h for h in result.history if h["phase"] == "quantize"])
        rows[name] = {
            "val_accuracy": bench.accuracy(result.model, "val"),
            "seconds": result.seconds,
            "overrides": overrides,
            "trace": [
                {k: h.get(k) for k in ("layer", "phase", "steps", "val_accuracy", "gradient_ratio")}
                for h in result.history
            ],
        }
        pt.log(f"{name}: val {rows[name]['val_accuracy']:.4f} in {result.seconds:.0f} s")
        write(preset, out_dir, rows, settings, time.perf_counter() - started)
    return write(preset, out_dir, rows, settings, time.perf_counter() - started)


def best_variant(rows):
    bitat = {k: v for k, v in rows.items() if "overrides" in v}
    name = max(bitat, key=lambda k: bitat[k]["val_accuracy"])
    return name, bitat[name]["overrides"]


def write(preset, out_dir, rows, settings, seconds):
    report = {
        "preset": preset,
        "settings": settings,
        "command": "python benchmarks/sweep.py " + " ".join(sys.argv[1:]),
        "backend": keras.backend.backend(),
        "split": "validation (held out of the training images)",
        "rows": rows,
        "total_seconds": seconds,
    }
    if any("overrides" in v for v in rows.values()):
        report["best"] = best_variant(rows)
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, f"sweep_{preset}")
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=1, default=float)
    lines = [
        f"# Validation sweep, preset `{preset}` (seed 0, 1x budget)",
        "",
        f"Command: `{report['command']}`; backend {report['backend']}; "
        f"{seconds / 60:.1f} min. Accuracy on the validation split.",
        "",
        "| row | val acc. | train s |",
        "|---|---|---|",
    ]
    for name, row in rows.items():
        secs = f"{row['seconds']:.0f}" if "seconds" in row else "-"
        lines.append(f"| {name} | {row['val_accuracy']:.2%} | {secs} |")
    if "best" in report:
        lines += ["", f"Best BiTAT variant: `{report['best'][0]}`: {report['best'][1]}"]
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(pt.PRESETS), default="cpu")
    parser.add_argument("--out", default=os.path.join(pt.HERE, "results"))
    parser.add_argument("--variants", default=None, help="comma list of VARIANTS names")
    args = parser.parse_args(argv)
    variants = args.variants.split(",") if args.variants else None
    report = run(args.preset, args.out, variants)
    print(json.dumps(report.get("best"), default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
