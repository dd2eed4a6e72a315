"""Choose BiTAT's defaults and the baselines' learning rates on the validation split.

    python benchmarks/sweep.py --preset cpu               # every row, one after another
    python benchmarks/sweep.py --preset cpu --jobs 20     # rows in parallel processes (GPU)

Every row starts from the same full-precision model (seed 0, trained once and saved beside
the report) and gets a budget in the preset's 1x epochs (ReActNet's optimizer steps at its
1x epoch count); naive STE and ReActNet get their learning rates and epoch counts chosen the
same way. Each BiTAT row keeps the validation accuracy after every phase, which shows where
accuracy is lost. The test set is never touched. Writes results/sweep_<preset>.json and .md;
the best BiTAT variant is printed as the ``BiTATConfig`` overrides it needs.

With ``--jobs N`` each row runs in its own process (N at a time) and its part of the report
is merged when it ends: on a GPU a small network's train step is dispatch-bound, so rows run
side by side at nearly full speed, but their ``train s`` are then not comparable timings.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import harness  # beside this file: on sys.path when run as a script
import keras
import render

from bitat_keras.fit import training

# The rows, in the order they run (presets.json): BiTAT variants (BiTATConfig overrides;
# ``budget``: multiple of the 1x epochs, default 1; ``paper``: from BiTATConfig.paper()) and
# baselines (method, learning rate, budget in multiples of the 1x epochs).
VARIANTS = harness.SETTINGS["sweep"]["variants"]
BASELINES = harness.SETTINGS["sweep"]["baselines"]


def full_precision(bench, path):
    """The seed-0 full-precision model: the preset's cached teacher where it has a teacher
    recipe (the premise presets), else loaded from ``path`` when it exists, or trained and
    saved there (so parallel rows share one teacher)."""
    settings = bench.settings
    if "teacher" in settings:
        return bench.teacher(0)[0]
    keras.utils.set_random_seed(0)
    fp = bench.model()
    if os.path.exists(path):
        fp.load_weights(path)
    else:
        training.train_full_precision(
            fp, bench.train, settings["fp_epochs"], settings["batch"], 0, settings["lr"]
        )
        fp.save_weights(path)
    return fp


def run_row(bench, fp, name):
    settings = bench.settings
    if name in BASELINES:
        method, lr, budget = BASELINES[name]
        keras.utils.set_random_seed(0)
        bnn, seconds = harness.BASELINES[method](
            fp,
            bench.binarization_data(0),
            epochs=harness.budget_epochs(budget, settings["epochs"]),
            learning_rate=lr,
            batch_size=settings["batch"],
        )
        return {
            "val_accuracy": bench.accuracy(bnn, "val"),
            "seconds": seconds,
            "budget": budget,
            "epochs": harness.budget_epochs(budget, settings["epochs"]),
        }
    overrides = dict(VARIANTS[name])
    budget = overrides.pop("budget", 1)
    result = bench.bitat(fp, 0, budget, validate=True, **overrides)
    return {
        "val_accuracy": bench.accuracy(result.model, "val"),
        "seconds": result.seconds,
        "budget": budget,
        "epochs": budget * settings["epochs"],
        "overrides": overrides,
        "trace": [
            {k: h.get(k) for k in ("layer", "phase", "steps", "val_accuracy", "gradient_ratio")}
            for h in result.history
        ],
    }


def settings_of(preset, epochs=None, fp_epochs=None):
    """The preset's settings, with ``epochs`` (the 1x budget) and ``fp_epochs`` (the
    teacher's training) replaced when given."""
    settings = dict(harness.PRESETS[preset])
    if epochs is not None:
        settings["epochs"] = epochs
    if fp_epochs is not None:
        settings["fp_epochs"] = fp_epochs
    return settings


def run(preset, out_dir, names=None, jobs=1, epochs=None, fp_epochs=None):
    settings = settings_of(preset, epochs, fp_epochs)
    bench = harness.Bench(preset, settings, out_dir)
    started = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    fp_path = os.path.join(out_dir, f"sweep_{preset}_fp.weights.h5")
    if os.path.exists(fp_path):
        os.remove(fp_path)  # a sweep trains its own teacher
    fp = full_precision(bench, fp_path)
    rows = {"full_precision": {"val_accuracy": bench.accuracy(fp, "val")}}
    if "teacher" in settings:  # a cached teacher: rows of earlier runs stay comparable
        rows = {**previous_rows(out_dir, preset, settings), **rows}
    harness.log(f"full precision: val {rows['full_precision']['val_accuracy']:.4f}")
    names = list(names or [*BASELINES, *VARIANTS])

    def done(name, row):
        rows[name] = {**row, "command": "python benchmarks/sweep.py " + " ".join(sys.argv[1:])}
        harness.log(f"{name}: val {row['val_accuracy']:.4f} in {row['seconds']:.0f} s")
        write(preset, out_dir, rows, settings, time.perf_counter() - started, jobs)

    if jobs == 1:
        for name in names:
            done(name, run_row(bench, fp, name))
    else:
        for name, row in _parallel(preset, out_dir, names, jobs, settings["epochs"]):
            done(name, row)
    ran = [n for n in names if n in rows]
    rows = {
        "full_precision": rows["full_precision"],
        **{n: r for n, r in rows.items() if n != "full_precision" and n not in ran},
        **{n: rows[n] for n in ran},
    }
    return write(preset, out_dir, rows, settings, time.perf_counter() - started, jobs)


def _parallel(preset, out_dir, names, jobs, epochs):
    """Yield ``(name, row)`` as child processes (one row each, ``jobs`` at a time) end."""
    parts = os.path.join(out_dir, "sweep_parts")
    os.makedirs(parts, exist_ok=True)
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    pending, running = list(names), {}
    while pending or running:
        while pending and len(running) < jobs:
            name = pending.pop(0)
            part = os.path.join(parts, name.replace("/", "_") + ".json")
            cmd = [sys.executable, os.path.abspath(__file__), "--preset", preset]
            cmd += ["--out", out_dir, "--epochs", str(epochs), "--child", name, "--part", part]
            log = open(part + ".log", "w")
            running[name] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=log), part, log)
        time.sleep(1)
        for name, (proc, part, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[name]
            if proc.returncode:
                harness.log(f"{name} failed (exit {proc.returncode}); see {part}.log")
                continue
            with open(part) as f:
                row = json.load(f)
            for path in (part, part + ".log"):  # kept only when the child failed
                os.remove(path)
            yield name, row


def previous_rows(out_dir, preset, settings):
    """The rows of an earlier sweep of ``preset`` made with the same settings (else none).
    Every row records its learning rate and its epochs, so a change of the preset's
    ``baseline_lr``, ``budgets`` or 1x ``epochs`` keeps the earlier rows (each row's
    ``budget`` stays the multiple of the 1x of its own run)."""
    # Each row records its own learning rate, budget, epochs and BiTAT settings (the
    # preset's bitat_overrides are for paper_table.py's rows, not the sweep's).
    ignore = render.SWEEP_ROW_SETTINGS
    path = os.path.join(out_dir, f"sweep_{preset}.json")
    previous = harness.earlier_report(path, lambda r: harness.same_settings(settings, r, ignore))
    if previous is None:
        return {}
    epochs = previous["settings"]["epochs"]  # rows written before they recorded their epochs
    return {
        name: {**row, "epochs": row["budget"] * epochs}
        if "budget" in row and "epochs" not in row
        else row
        for name, row in previous["rows"].items()
    }


def best_variant(rows):
    bitat = {k: v for k, v in rows.items() if "overrides" in v and v.get("budget", 1) == 1}
    name = max(bitat, key=lambda k: bitat[k]["val_accuracy"])
    return name, bitat[name]["overrides"]


def write(preset, out_dir, rows, settings, seconds, jobs=1):
    report = {
        "preset": preset,
        "settings": settings,
        "command": "python benchmarks/sweep.py " + " ".join(sys.argv[1:]),
        "backend": keras.backend.backend(),
        "split": "validation (held out of the training images)",
        "parallel_jobs": jobs,
        "rows": rows,
        "total_seconds": seconds,
    }
    if any("overrides" in v and v.get("budget", 1) == 1 for v in rows.values()):
        report["best"] = best_variant(rows)
    render.write_report(report, os.path.join(out_dir, f"sweep_{preset}"))
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(harness.PRESETS), default="cpu")
    parser.add_argument("--out", default=render.RESULTS)
    parser.add_argument(
        "--rows", default=None, help="comma list of VARIANTS and BASELINES names (default: all)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="rows run in parallel processes")
    parser.add_argument("--epochs", type=int, default=None, help="1x epochs (default: preset's)")
    parser.add_argument(
        "--fp-epochs", type=int, default=None, help="the teacher's epochs (default: preset's)"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--part", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # one row of a parallel sweep, on the parent's saved teacher
        bench = harness.Bench(args.preset, settings_of(args.preset, args.epochs), args.out)
        fp = full_precision(bench, os.path.join(args.out, f"sweep_{args.preset}_fp.weights.h5"))
        row = run_row(bench, fp, args.child)
        with open(args.part, "w") as f:
            json.dump(row, f, default=float)
        return 0
    names = args.rows.split(",") if args.rows else [*BASELINES, *VARIANTS]
    unknown = [n for n in names if n not in BASELINES and n not in VARIANTS]
    if unknown:
        parser.error(
            f"unknown rows {unknown}; expected names from {list(BASELINES)} or " f"{list(VARIANTS)}"
        )
    if args.fp_epochs is not None and args.fp_epochs < 1:
        parser.error(f"--fp-epochs must be at least 1, got {args.fp_epochs}")
    report = run(args.preset, args.out, names, args.jobs, args.epochs, args.fp_epochs)
    print(json.dumps(report.get("best"), default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
