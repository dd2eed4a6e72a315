"""Run the premise presets' paper-table rows on a lent GPU machine in one call.

The device machine has JAX but neither TensorFlow nor a network, and its time is short and
counted, so everything it needs travels with the working tree and every row runs in a
process of its own, many at a time (a small network's step is dispatch-bound on a GPU):

    # here: wheels of this machine's Keras (and namex, optree) for the device's Python,
    # the Fashion-MNIST files and the cached teachers, into a git-ignored folder
    python tools/device_matrix.py stage .gpu
    python tools/device_matrix.py plan       # the jobs, in the order they start
    # on the device (the `run` tool; carry .gpu), under the call's time limit
    python tools/device_matrix.py run .gpu --out "$OUT" --deadline 540 --jobs 16
    # back here: each job's report merges into one JAX report per preset
    python benchmarks/paper_table.py --preset cpu_strong --out benchmarks/results/jax \\
        --merge <fetched>/jobs/cpu_strong-*

Teachers missing from the staged folder train first (one job per preset and seed); a
row waits for its teacher. Jobs start in the plan's order (1x rows seed by seed, then the
other budgets on seed 0) and the ones still running at the deadline are stopped: each
report is saved after every row, so a stopped job keeps its finished rows. Rows that share
the machine are not timings; the merged reports say which jobs ran side by side.
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
# Names only: `run` starts before the staged Keras is installed, so this script imports
# nothing from benchmarks/ (paper_table.py's main rows, the ones that take longest first).
PRESETS = ("cpu_strong", "lowdata")
MAIN_ROWS = ("bitat", "reactnet", "naive_ste_distill", "naive_ste")


def plan(presets=PRESETS, seeds=(0, 1, 2), budgets=(0.5, 0.25, 2), staged=()):
    """The jobs as ``(name, teacher, argv)`` in start order. ``teacher`` is the
    ``(preset, seed)`` whose cached model the job needs (a teacher job has None);
    ``staged``: the ``(preset, seed)`` teachers already cached."""
    jobs = []
    for preset in presets:
        for seed in seeds:
            if (preset, seed) not in staged:
                argv = ["--preset", preset, "--seed", str(seed), "--rows", "", "--groups", ""]
                jobs.append((f"{preset}-teacher{seed}", None, argv))

    def row(preset, seed, budget, rows, groups=""):
        name = f"{preset}-s{seed}-{budget:g}x-{rows or groups}"
        argv = ["--preset", preset, "--seed", str(seed), "--budgets", f"{budget:g}"]
        return name, (preset, seed), argv + ["--rows", rows, "--groups", groups]

    for seed in seeds:  # 1x: every main row and the transform ablation, seed by seed
        for preset in presets:
            jobs += [row(preset, seed, 1, r) for r in MAIN_ROWS]
            jobs.append(row(preset, seed, 1, "", "ablation"))
    for budget in budgets:  # the other budgets, seed 0
        for preset in presets:
            jobs += [row(preset, seeds[0], budget, r) for r in MAIN_ROWS]
    return jobs


def staged_teachers(folder):
    """``(preset, seed)`` of the teachers cached in ``folder``."""
    found = set()
    for path in glob.glob(os.path.join(folder, "*_seed*.keras")):
        preset, _, seed = os.path.basename(path)[: -len(".keras")].rpartition("_seed")
        if os.path.exists(path[: -len(".keras")] + ".json") and seed.isdigit():
            found.add((preset, int(seed)))
    return found


def stage(folder, python_version="3.12"):
    """Wheels for the device's Python, the data files and the cached teachers."""
    import keras  # this machine's Keras version is the one the device runs

    from bitat_keras import datasets

    wheels = os.path.join(folder, "whl")
    os.makedirs(wheels, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:"]
        + ["--python-version", python_version, "--platform", "manylinux2014_x86_64"]
        + ["--dest", wheels, f"keras=={keras.__version__}"],
        check=True,
    )
    # keras' own dependencies that the device lacks; numpy, h5py, ml-dtypes, rich come
    # with JAX there, so only these are installed (with --no-deps).
    keep = ("keras-", "namex-", "optree-")
    for path in glob.glob(os.path.join(wheels, "*.whl")):
        if not os.path.basename(path).startswith(keep):
            os.remove(path)
    data = os.path.join(folder, "data")
    os.makedirs(data, exist_ok=True)
    source = os.environ.get(datasets.FASHION_MNIST_ENV, datasets.FASHION_MNIST_DEBIAN_DIR)
    for pair in datasets.FASHION_MNIST_FILES.values():
        for name in pair:
            shutil.copy(os.path.join(source, name), data)
    teachers = os.path.join(folder, "teachers")
    os.makedirs(teachers, exist_ok=True)
    for path in glob.glob(os.path.join(BENCHMARKS, "results", "teachers", "*")):
        shutil.copy(path, teachers)
    print(
        f"staged {folder}: {sorted(os.listdir(wheels))}, "
        f"teachers {sorted(staged_teachers(teachers))}"
    )


def run(folder, out, deadline, jobs, presets=PRESETS, seeds=(0, 1, 2), budgets=(0.5, 0.25, 2)):
    """Install the staged wheels, then run the plan, ``jobs`` processes at a time, until
    ``deadline`` seconds have passed; the reports land in ``out/jobs/<name>``, the logs
    in ``out/logs``, newly trained teachers in ``out/teachers``. Returns 0 if every job
    finished."""
    start = time.monotonic()
    wheels = sorted(glob.glob(os.path.join(folder, "whl", "*.whl")))
    if wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps"] + wheels,
            check=True,
        )
    teachers = os.path.abspath(os.path.join(folder, "teachers"))
    os.makedirs(teachers, exist_ok=True)
    staged = staged_teachers(teachers)
    env = dict(
        os.environ,
        KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "jax"),
        XLA_PYTHON_CLIENT_PREALLOCATE="false",  # many processes share one GPU
        PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
        PYTHONUNBUFFERED="1",
    )
    data = os.path.join(folder, "data")
    if os.path.isdir(data):
        env["BITAT_FASHION_MNIST_DIR"] = os.path.abspath(data)  # datasets.FASHION_MNIST_ENV
    for name in ("logs", "jobs"):
        os.makedirs(os.path.join(out, name), exist_ok=True)
    queue = plan(presets, seeds, budgets, staged)
    running, done, failed = {}, set(staged), []
    trained = {}  # job name -> the (preset, seed) whose teacher it trains
    while queue or running:
        for name, process in list(running.items()):
            code = process.poll()
            if code is None:
                continue
            del running[name]
            if code == 0 and name in trained:
                done.add(trained[name])
            elif code != 0:
                failed.append(name)
            print(f"[matrix {time.monotonic() - start:5.0f}s] {name}: exit {code}", flush=True)
        ready = [job for job in queue if job[1] is None or job[1] in done]
        while ready and len(running) < jobs and time.monotonic() - start < deadline:
            name, teacher, argv = ready.pop(0)
            queue.remove((name, teacher, argv))
            if teacher is None:
                trained[name] = (argv[1], int(argv[3]))
            command = [sys.executable, os.path.join(BENCHMARKS, "paper_table.py")] + argv
            command += ["--out", os.path.join(out, "jobs", name), "--teachers", teachers]
            with open(os.path.join(out, "logs", name + ".log"), "w") as log:
                running[name] = subprocess.Popen(command, stdout=log, stderr=log, env=env)
            print(f"[matrix {time.monotonic() - start:5.0f}s] start {name}", flush=True)
        if time.monotonic() - start >= deadline:
            for name, process in running.items():
                process.terminate()
                print(f"[matrix] deadline: stopped {name}", flush=True)
            for process in running.values():
                process.wait()
            failed += list(running) + [job[0] for job in queue]
            break
        if not ready and not running and queue:  # waiting on a teacher that failed
            failed += [job[0] for job in queue]
            break
        time.sleep(2)
    new = staged_teachers(teachers) - staged
    if new:
        os.makedirs(os.path.join(out, "teachers"), exist_ok=True)
        for preset, seed in sorted(new):
            for ext in (".keras", ".json"):
                shutil.copy(
                    os.path.join(teachers, f"{preset}_seed{seed}{ext}"),
                    os.path.join(out, "teachers"),
                )
    print(f"[matrix] {time.monotonic() - start:.0f} s; not finished: {failed or 'none'}")
    return 1 if failed else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("stage", "plan", "run"))
    parser.add_argument("folder", nargs="?", default=".gpu", help="the staged folder")
    parser.add_argument("--out", default=os.environ.get("OUT", "device_out"))
    parser.add_argument("--deadline", type=float, default=540, help="seconds")
    parser.add_argument("--jobs", type=int, default=16, help="processes at a time")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budgets", default="0.5,0.25,2", help="beyond 1x, on the first seed")
    args = parser.parse_args(argv)
    presets = tuple(p for p in args.presets.split(",") if p)
    seeds = tuple(int(s) for s in args.seeds.split(",") if s)
    budgets = tuple(float(b) for b in args.budgets.split(",") if b)
    if args.command == "stage":
        stage(args.folder)
        return 0
    if args.command == "plan":
        staged = staged_teachers(os.path.join(args.folder, "teachers"))
        for name, _, argv in plan(presets, seeds, budgets, staged):
            print(name, " ".join(repr(a) if not a else a for a in argv))
        return 0
    return run(args.folder, args.out, args.deadline, args.jobs, presets, seeds, budgets)


if __name__ == "__main__":
    raise SystemExit(main())
