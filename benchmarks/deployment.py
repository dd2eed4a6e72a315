"""Deployment columns of a preset's network without training it: flatbuffer sizes, the
LceBconv2d count, parity and CPU latency do not depend on the weights' values.

    python benchmarks/deployment.py --preset full   # the 1.07 M-param anchor network, ~2 min

This is how the size and latency goals are checked at the `full` preset's size on a machine
that cannot train it. Writes benchmarks/results/deployment_<preset>.json and .md.
"""

import argparse
import json
import os
import sys
import time

import harness  # beside this file: on sys.path when run as a script
import keras
import render
from latency import untie

import bitat_keras as bk


def run(preset, out_dir, runs=None):
    settings = dict(harness.PRESETS[preset])
    started = time.perf_counter()
    bench = harness.Bench(preset, settings, out_dir)
    keras.utils.set_random_seed(0)
    fp = bench.model()  # initial weights: the graph, op count and sizes are those of a trained net
    untie(fp, seed=0)
    bnn = bk.binarize(fp)
    deploy = harness.deployment(
        fp, bnn, bench.test[0][:1], bench.train[0][:64], runs or settings["latency_runs"]
    )
    report = {
        "preset": preset,
        "command": "python benchmarks/deployment.py " + " ".join(sys.argv[1:]),
        "backend": keras.backend.backend(),
        "cpus": os.cpu_count(),
        "params": int(fp.count_params()),
        "input_shape": list(bench.shape),
        "deployment": deploy,
        "goals": {
            "lce_at_most_1_20_of_float_size": deploy["lce_over_float_size"] <= 1 / 20,
            "lce_at_most_0.5x_float_latency_1t": deploy["lce_over_float_latency_1t"] <= 0.5,
        },
        "total_seconds": time.perf_counter() - started,
    }
    render.write_report(report, os.path.join(out_dir, f"deployment_{preset}"))
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(harness.PRESETS), default="full")
    parser.add_argument("--runs", type=int, default=None, help="latency runs per setting")
    parser.add_argument("--out", default=render.RESULTS)
    args = parser.parse_args(argv)
    report = run(args.preset, args.out, args.runs)
    print(json.dumps(report["goals"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
