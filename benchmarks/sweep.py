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
    "q+longer-final": dict(
        activations_first_epochs=0, epochs_per_layer=1, finetune_epochs=0, final_epochs=8
    ),
}


def _variant(transform="aggregated", schedule="q+final", lr=None, **overrides):
    values = dict(transform=transform, distillation="all", **SCHEDULES[schedule])
    if lr is not None:
        values.update(learning_rate=lr, finetune_learning_rate=lr)
    values.update(overrides)
    return values


# BiTAT rows: BiTATConfig overrides (``budget``: multiple of the 1x epochs, default 1;
# ``paper``: start from BiTATConfig.paper()). In the order they run.
VARIANTS = {
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
    # Learning rate and a longer joint phase (second sweep).
    "agg/q+final/lr2e-3": _variant(lr=2e-3),
    "none/q+final/lr2e-3": _variant("none", lr=2e-3),
    "agg/q+long-final/lr2e-3": _variant(schedule="q+long-final", lr=2e-3),
    "none/q+long-final/lr2e-3": _variant("none", "q+long-final", lr=2e-3),
    "agg/q+long-final/lr1e-3": _variant(schedule="q+long-final", lr=1e-3),
    "agg/q+long-final/lr4e-3": _variant(schedule="q+long-final", lr=4e-3),
    "agg/act+q+final/lr2e-3": _variant(schedule="act+q+final", lr=2e-3),
    "agg-lam1/q+long-final/lr2e-3": _variant(schedule="q+long-final", lr=2e-3, lam=1.0),
    "cross/q+long-final/lr2e-3": _variant("cross", "q+long-final", lr=2e-3),
    "intra/q+long-final/lr2e-3": _variant("intra", "q+long-final", lr=2e-3),
    "agg/q+long-final/lr2e-3/2x": _variant(schedule="q+long-final", lr=2e-3, budget=2),
    "paper/lr2e-3": dict(paper=True, learning_rate=2e-3, finetune_learning_rate=2e-3),
    # At 48 epochs (ReActNet converged at lr 2e-3) and higher learning rates (third sweep).
    "agg/q+long-final/lr4e-3/2x": _variant(schedule="q+long-final", lr=4e-3, budget=2),
    "none/q+long-final/lr4e-3/2x": _variant("none", "q+long-final", lr=4e-3, budget=2),
    "agg/q+longer-final/lr4e-3/2x": _variant(schedule="q+longer-final", lr=4e-3, budget=2),
    "agg/q+long-final/lr8e-3/2x": _variant(schedule="q+long-final", lr=8e-3, budget=2),
    # Both best learning rates sat at the top of the grid: one step further (fourth sweep).
    "agg/q+long-final/lr16e-3/2x": _variant(schedule="q+long-final", lr=16e-3, budget=2),
    # Naive STE (task loss only) beat its teacher on validation: does distilling from that
    # teacher cap BiTAT? The same rows on the task loss alone (fifth sweep).
    "agg/q+long-final/lr8e-3/2x/task": _variant(
        schedule="q+long-final", lr=8e-3, budget=2, distillation="none"
    ),
    "agg/q+long-final/lr16e-3/2x/task": _variant(
        schedule="q+long-final", lr=16e-3, budget=2, distillation="none"
    ),
    "none/q+long-final/lr8e-3/2x/task": _variant(
        "none", "q+long-final", lr=8e-3, budget=2, distillation="none"
    ),
    "agg/q+longer-final/lr8e-3/2x/task": _variant(
        schedule="q+longer-final", lr=8e-3, budget=2, distillation="none"
    ),
    "agg/q+long-final/lr8e-3-final16e-3/2x/task": _variant(
        schedule="q+long-final",
        lr=8e-3,
        finetune_learning_rate=16e-3,
        budget=2,
        distillation="none",
    ),
    # At lam 0.3 the penalty's gradient is 0.04-4 % of the task's (cpu.json's
    # gradient_ratio) and the transform ablation is level on the test set: a stronger
    # penalty, one and two decades up (run 6).
    "agg-lam3/q+long-final/lr8e-3/2x/task": _variant(
        schedule="q+long-final", lr=8e-3, budget=2, distillation="none", lam=3.0
    ),
    "agg-lam30/q+long-final/lr8e-3/2x/task": _variant(
        schedule="q+long-final", lr=8e-3, budget=2, distillation="none", lam=30.0
    ),
    # The premise presets (a cached strong teacher; lowdata: 2,000 labelled images): the
    # library defaults against its distillation options, at 0.5x of the preset's 1x.
    "defaults/0.5x": dict(budget=0.5),
    "defaults/0.5x/distill-all": dict(budget=0.5, distillation="all"),
    "defaults/0.5x/distill-finetune": dict(budget=0.5, distillation="finetune"),
    # lowdata: "all" still trails ReActNet, and most of its loss is the first layer's
    # quantize phase and the top block's. ReActNet's first step (binary activations over
    # real weights everywhere), a longer final phase, and the learning rate.
    "defaults/0.5x/distill-all/act-first": dict(
        budget=0.5, distillation="all", activations_first_epochs=8
    ),
    "defaults/0.5x/distill-all/final16": dict(budget=0.5, distillation="all", final_epochs=16),
    "defaults/0.5x/distill-all/lr16e-3": dict(
        budget=0.5, distillation="all", learning_rate=16e-3, finetune_learning_rate=16e-3
    ),
    "defaults/0.5x/distill-all/lr4e-3": dict(
        budget=0.5, distillation="all", learning_rate=4e-3, finetune_learning_rate=4e-3
    ),
    # ReActNet's best learning rate at 0.5x lost to a lower one at 1x: BiTAT at 1x.
    "defaults/1x/distill-all": dict(distillation="all"),
    # cpu_strong at 1x: the defaults, and lowdata's choice of split on the task loss.
    "defaults/1x": dict(),
    "defaults/1x/q1+final16": dict(epochs_per_layer=1, final_epochs=16),
    "defaults/1x/distill-all/lr4e-3": dict(
        distillation="all", learning_rate=4e-3, finetune_learning_rate=4e-3
    ),
    # lowdata (run with --epochs 320): BiTAT's final (joint) phase recovers what the
    # progressive phases lose, and naive STE distilled (all joint) beats it. The same budget
    # with a smaller progressive share: 2/3 and 4/5 of the epochs in the final phase (the
    # defaults give it 1/3); then at twice the epochs. cpu_strong: also at 8e-3, the best
    # rate of both naive STE rows on that preset's validation split, and at 16e-3 because
    # 8e-3 was the best of BiTAT's own grid there.
    **{
        f"defaults/{budget}x/distill-all/lr{lr * 1e3:g}e-3/q{q:g}+final16": dict(
            budget=budget,
            distillation="all",
            learning_rate=lr,
            finetune_learning_rate=lr,
            epochs_per_layer=q,
            final_epochs=16,
        )
        for lr in (4e-3, 8e-3, 16e-3)
        for budget in (1, 2)
        for q in (1, 0.5)
    },
}

# Baseline rows: (method, learning rate, budget in multiples of the 1x epochs).
BASELINES = {
    "naive_ste_lr0.001": ("naive_ste", 1e-3, 1),
    "naive_ste_lr0.002": ("naive_ste", 2e-3, 1),
    "naive_ste_lr0.004": ("naive_ste", 4e-3, 1),
    "naive_ste_lr0.002_2x": ("naive_ste", 2e-3, 2),
    "reactnet_lr0.001": ("reactnet", 1e-3, 1),
    "reactnet_lr0.002": ("reactnet", 2e-3, 1),
    "reactnet_lr0.004": ("reactnet", 4e-3, 1),
    "reactnet_lr0.002_2x": ("reactnet", 2e-3, 2),
    "reactnet_lr0.002_4x": ("reactnet", 2e-3, 4),
    "naive_ste_lr0.004_2x": ("naive_ste", 4e-3, 2),
    "naive_ste_lr0.008_2x": ("naive_ste", 8e-3, 2),
    "reactnet_lr0.004_2x": ("reactnet", 4e-3, 2),
    "reactnet_lr0.008_2x": ("reactnet", 8e-3, 2),
    "naive_ste_lr0.016_2x": ("naive_ste", 16e-3, 2),
    "naive_ste_lr0.032_2x": ("naive_ste", 32e-3, 2),
    # The premise presets, at 0.5x (the grid around cpu's choices).
    **{
        f"{method}_lr{lr:g}_0.5x": (method, lr, 0.5)
        for method, grid in (
            ("reactnet", (2e-3, 4e-3, 8e-3, 16e-3)),
            ("naive_ste_distill", (2e-3, 4e-3, 8e-3, 16e-3, 32e-3)),
            ("naive_ste", (2e-3, 4e-3, 8e-3, 16e-3, 32e-3)),
        )
        for lr in grid
    },
    # The premise presets at 1x (cpu_strong: the grid around cpu's choices, chosen at the
    # budget the rows run at).
    **{
        f"{method}_lr{lr:g}": (method, lr, 1)
        for method, grid in (
            ("reactnet", (2e-3, 4e-3, 8e-3)),
            ("naive_ste_distill", (4e-3, 8e-3, 16e-3, 32e-3)),
            ("naive_ste", (4e-3, 8e-3, 16e-3, 32e-3)),
        )
        for lr in grid
    },
    # lowdata at 320 epochs: does naive STE distilled gain from the doubling, as ReActNet
    # does and BiTAT does not?
    "naive_ste_distill_lr0.004": ("naive_ste_distill", 4e-3, 1),
}


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
    path = os.path.join(out_dir, f"sweep_{preset}.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        previous = json.load(f)
    # Each row records its own learning rate, budget, epochs and BiTAT settings (the
    # preset's bitat_overrides are for paper_table.py's rows, not the sweep's).
    ignore = ("baseline_lr", "budgets", "epochs", "bitat_overrides")
    if not harness.same_settings(settings, previous, ignore):
        harness.log(f"{path} was made with other settings: starting a new sweep")
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
    base = os.path.join(out_dir, f"sweep_{preset}")
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=1, default=float)
    render.write_markdown(base + ".json")
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(harness.PRESETS), default="cpu")
    parser.add_argument("--out", default=os.path.join(harness.HERE, "results"))
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
