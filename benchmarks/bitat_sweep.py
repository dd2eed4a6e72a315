"""What we tried to make BiTAT beat ReActNet: BiTAT variants on one seed of a preset's data.

    python benchmarks/bitat_sweep.py --preset quick   # about 30 min on 2 CPU cores

Every variant starts from the same full-precision model (seed 0) and gets the same epoch
budget (2x the preset's epochs); naive STE and ReActNet at the same budget are the
references. Each row keeps its per-layer validation accuracy after every phase, which shows
where accuracy is lost. Writes benchmarks/results/sweep_<preset>.json and .md.
"""

import argparse
import json
import os
import sys
import time

import keras

from bitat_keras import baselines

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import paper_table as pt  # noqa: E402

# name: (transform, BiTATConfig overrides); "act_first" is a fraction of the 1x epochs.
VARIANTS = {
    "none": ("none", {}),
    "aggregated_lam100": ("aggregated", {}),
    "aggregated_lam1": ("aggregated", {"lam": 1.0}),
    "aggregated_lam0.01": ("aggregated", {"lam": 0.01}),
    "aggregated_lam100_sign": ("aggregated", {"penalty_gradient": "sign"}),
    "aggregated_lam1_sign": ("aggregated", {"lam": 1.0, "penalty_gradient": "sign"}),
    "none_actfirst_distill": ("none", {"act_first": 0.5, "distillation": "all"}),
    "aggregated_lam1_actfirst_distill": (
        "aggregated",
        {"lam": 1.0, "act_first": 0.5, "distillation": "all"},
    ),
    "aggregated_lam1_sign_actfirst_distill": (
        "aggregated",
        {"lam": 1.0, "penalty_gradient": "sign", "act_first": 0.5, "distillation": "all"},
    ),
}


def run(preset, out_dir, budget=2, variants=None, fp_epochs=None):
    p = dict(pt.PRESETS[preset])
    if fp_epochs is not None:
        p["fp_epochs"] = fp_epochs
    b = pt.Bench(preset, p, out_dir)
    started = time.perf_counter()
    keras.utils.set_random_seed(0)
    fp = b.model()
    pt.train_full_precision(fp, b.train, pt.fp_epochs(p), p["batch"], 0)
    rows = {"full_precision": {"accuracy": b.acc(fp)}}
    epochs = budget * p["epochs"]
    keras.utils.set_random_seed(0)
    bnn, secs = baselines.naive_ste(
        fp, b.train, epochs=epochs, learning_rate=p["lr"], batch_size=p["batch"]
    )
    rows[f"naive_ste_{budget}x"] = {"accuracy": b.acc(bnn), "seconds": secs}
    keras.utils.set_random_seed(0)
    bnn, secs = baselines.reactnet_two_step(
        fp, b.train, epochs=epochs, learning_rate=p["lr"], batch_size=p["batch"]
    )
    rows[f"reactnet_{budget}x"] = {"accuracy": b.acc(bnn), "seconds": secs}
    for name in variants or VARIANTS:
        transform, overrides = VARIANTS[name]
        overrides = dict(overrides)
        act_first = int(overrides.pop("act_first", 0) * p["epochs"])
        result, e, f, layers = b.bitat(
            fp, 0, transform, budget, validate=True, act_first=act_first, **overrides
        )
        rows[name] = {
            "accuracy": b.acc(result.model),
            "seconds": result.seconds,
            "epochs": pt.epochs_seen(e, f, layers) + act_first,
            "config": {"transform": transform, "activations_first_epochs": act_first, **overrides},
            "trace": [
                {
                    "layer": h["layer"],
                    "phase": h["phase"],
                    "val_accuracy": h.get("val_accuracy"),
                    "penalty": h.get("penalty"),
                }
                for h in result.history
            ],
        }
        pt.log(f"{name}: {rows[name]['accuracy']:.4f} in {result.seconds:.0f} s")
    report = {
        "preset": preset,
        "budget": budget,
        "fp_epochs": pt.fp_epochs(p),
        "seed": 0,
        "command": "python benchmarks/bitat_sweep.py " + " ".join(sys.argv[1:]),
        "backend": keras.backend.backend(),
        "train_size": len(b.train[0]),
        "test_size": len(b.test[0]),
        "rows": rows,
        "total_seconds": time.perf_counter() - started,
    }
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"sweep_{preset}")
    with open(path + ".json", "w") as fh:
        json.dump(report, fh, indent=1)
    with open(path + ".md", "w") as fh:
        fh.write(markdown(report))
    return report


def markdown(report):
    lines = [
        f"# BiTAT variants, preset `{report['preset']}`, seed 0, {report['budget']}x budget",
        "",
        f"Command: `{report['command']}`; backend {report['backend']}; "
        f"{report['train_size']} train / {report['test_size']} test; "
        f"total {report['total_seconds'] / 60:.1f} min.",
        "",
        "| row | test acc. | epochs | validation accuracy after each phase (bottom to top) |",
        "|---|---|---|---|",
    ]
    for name, row in report["rows"].items():
        trace = " ".join(f"{t['phase'][0]}{t['val_accuracy']:.2f}" for t in row.get("trace", []))
        lines.append(f"| {name} | {row['accuracy']:.2%} | {row.get('epochs', '-')} | {trace} |")
    lines += [
        "",
        "Trace letters: a = all activations binarized (first phase), q = a layer's quantize "
        "phase, f = the fine-tune phase after it.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(pt.PRESETS), default="quick")
    parser.add_argument("--budget", type=int, default=2, help="multiple of the 1x epochs")
    parser.add_argument("--variants", nargs="*", choices=sorted(VARIANTS), default=None)
    parser.add_argument(
        "--fp-epochs", type=int, default=None, help="teacher epochs (default: the preset's)"
    )
    parser.add_argument("--out", default=os.path.join(pt.HERE, "results"))
    args = parser.parse_args(argv)
    run(args.preset, args.out, args.budget, args.variants, args.fp_epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
