"""ReActNet's converged epoch count on a preset: the 1x budget of the paper table.

Trains ReActNet's two-step recipe from the preset's teacher (seed 0 by default) on the
data the binary rows see (the preset's subset and augmentation) at doubling epoch counts,
and reports validation accuracy and wall time for each. "Converged" is the smallest count
whose doubling gains less than 0.3 points on the validation split. Writes
``results/converge_<preset>.json`` and ``.md``.

    python benchmarks/converge.py --preset lowdata --epochs 40,80,160,320
    python benchmarks/converge.py --preset lowdata --epochs 640 --learning-rate 4e-3

Points at each learning rate are kept (a run adds epoch counts to those of its rate).
"""

import argparse
import json
import os
import sys

import keras
import render
from harness import BASELINES, PRESETS, Bench, earlier_report, host, log
from render import converged


def run(preset, out_dir, epoch_counts, seed=0, method="reactnet", learning_rate=None):
    settings = PRESETS[preset]
    if learning_rate is not None:  # another than the preset's (the report keeps each one's)
        settings = {**settings, "baseline_lr": {**settings["baseline_lr"], method: learning_rate}}
    bench = Bench(preset, settings, out_dir)
    fp, record = bench.teacher(seed)
    points, earlier = previous_points(out_dir, preset, method, seed, settings, record)
    for epochs in epoch_counts:
        if any(p["epochs"] == epochs for p in points):
            log(f"{method} {epochs} epochs: measured before, kept")
            continue
        keras.utils.set_random_seed(seed)
        bnn, seconds = BASELINES[method](
            fp,
            bench.binarization_data(seed),
            epochs=epochs,
            learning_rate=settings["baseline_lr"][method],
            batch_size=settings["batch"],
        )
        points.append(
            {
                "epochs": epochs,
                "seconds": seconds,
                "val_accuracy": bench.accuracy(bnn, "val"),
                "command": "python benchmarks/converge.py " + " ".join(sys.argv[1:]),
            }
        )
        log(f"{method} {epochs} epochs: val {points[-1]['val_accuracy']:.4f}, {seconds:.0f} s")
        points.sort(key=lambda p: p["epochs"])
        write(preset, out_dir, method, seed, record, settings, points, earlier)
    return write(preset, out_dir, method, seed, record, settings, points, earlier)


def previous_points(out_dir, preset, method, seed, settings, record):
    """``(points, earlier)``: the points of an earlier run with the same method, seed,
    teacher and learning rate (a run may add epoch counts to them), else none; and the
    points measured with the same method, seed and teacher at other learning rates
    (``[{"learning_rate", "points"}]``, kept in the report)."""
    teacher = json.loads(json.dumps({k: v for k, v in record.items() if k != "key"}))
    old = earlier_report(
        os.path.join(out_dir, f"converge_{preset}.json"),
        lambda r: (r["method"], r["seed"], r["teacher"]) == (method, seed, teacher),
    )
    if old is None:
        return [], []
    lr = settings["baseline_lr"][method]
    runs = [
        *old.get("earlier", []),
        {"learning_rate": old["learning_rate"], "points": old["points"]},
    ]
    same = [p for run in runs if run["learning_rate"] == lr for p in run["points"]]
    return same, [run for run in runs if run["learning_rate"] != lr]


def write(preset, out_dir, method, seed, record, settings, points, earlier=()):
    """Write the report of the points so far (after each one: an interrupted run keeps
    them), with the ``earlier`` learning rates' points below."""
    report = {
        "preset": preset,
        "method": method,
        "seed": seed,
        "command": "python benchmarks/converge.py " + " ".join(sys.argv[1:]),
        "machine": host(),
        "backend": keras.backend.backend(),
        "teacher": {k: v for k, v in record.items() if k != "key"},
        "learning_rate": settings["baseline_lr"][method],
        "points": points,
        "converged_epochs": converged(points),
        "earlier": list(earlier),
    }
    render.write_report(report, os.path.join(out_dir, f"converge_{preset}"))
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="lowdata")
    parser.add_argument("--out", default=render.RESULTS)
    parser.add_argument("--epochs", default="40,80,160,320", help="comma list")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", choices=("reactnet", "naive_ste"), default="reactnet")
    parser.add_argument(
        "--learning-rate", type=float, default=None, help="default: the preset's baseline_lr"
    )
    args = parser.parse_args(argv)
    epochs = [int(e) for e in args.epochs.split(",")]
    report = run(args.preset, args.out, epochs, args.seed, args.method, args.learning_rate)
    print(json.dumps({k: report[k] for k in ("points", "converged_epochs")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
