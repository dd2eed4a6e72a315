"""Seconds of one BatchNorm re-estimation (``bk.training.recalibrate_batchnorm``, which
``progressive_fit`` runs after every phase) under JAX: eager forward passes against the
jitted forward, on the benchmark presets' networks.

    KERAS_BACKEND=jax python benchmarks/batchnorm_time.py            # cpu and full networks
    KERAS_BACKEND=jax python benchmarks/batchnorm_time.py --mini --out /tmp/b   # seconds

For each network, ``--calls`` re-estimations of 20 batches of
the preset's batch size (random images: the time does not depend on the values), first with
eager forward passes (``backend.traced_forward`` patched to False for the call, the path torch
takes), then jitted. The first call of each includes its compilation (JAX compiles
each eager operation on its first use too); the later ones are what each further phase costs.
The two paths' moving statistics are compared after the last call. Writes
``batchnorm_time.json``, ``.md`` and ``.png`` to ``--out``.
"""

import argparse
import os
import sys
import time

import figures  # beside this file: on sys.path when run as a script
import harness
import keras
import numpy as np
import render

import bitat_keras as bk
from bitat_keras.fit import backend, training

BATCHES = render.BATCHNORM_BATCHES  # batches per call (the report says how many)


def networks(mini):
    """(name, model, batch size) of each network measured."""
    if mini:
        model = bk.models.reactnet_mobilenet(
            (28, 28, 1), num_classes=10, width_multiplier=0.25, blocks=[(32, 1)]
        )
        return [("mini", model, 16)]
    presets = {name: harness.PRESETS[name] for name in ("cpu", "full")}
    return [(n, harness.network(s, (28, 28, 1), 10), s["batch"]) for n, s in presets.items()]


def moving_statistics(model):
    return [
        keras.ops.convert_to_numpy(v)
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for v in (layer.moving_mean, layer.moving_variance)
    ]


def time_calls(model, batches, calls, jitted):
    """Seconds of each of ``calls`` re-estimations, and the moving statistics after them."""
    patched = backend.traced_forward
    if not jitted:
        backend.traced_forward = lambda: False
    try:
        seconds = []
        for _ in range(calls):
            start = time.perf_counter()
            done = training.recalibrate_batchnorm(model, batches, reuse_key=f"jit {jitted}")
            assert done == len(batches)
            seconds.append(time.perf_counter() - start)
    finally:
        backend.traced_forward = patched
    return seconds, moving_statistics(model)


def measure(name, model, batch, calls, seed):
    rng = np.random.default_rng(seed)
    batches = [rng.random((batch, 28, 28, 1), dtype="float32") for _ in range(BATCHES)]
    bns = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    row = {"network": name, "batch": batch, "batchnorms": bns, "params": model.count_params()}
    for path, jitted in (("eager", False), ("jit", True)):
        seconds, stats = time_calls(model, batches, calls, jitted)
        row[path] = {"seconds": seconds, "first": seconds[0], "later": float(np.mean(seconds[1:]))}
        row[f"{path}_stats"] = stats
    diffs = [
        float(np.max(np.abs(a - b) / (np.abs(a) + 1e-3)))
        for a, b in zip(row.pop("eager_stats"), row.pop("jit_stats"), strict=True)
    ]
    row["max_relative_difference"] = max(diffs)
    row["speedup_later"] = row["eager"]["later"] / row["jit"]["later"]
    print(
        f"[batchnorm] {name}: eager {row['eager']['first']:.2f} s first, "
        f"{row['eager']['later']:.3f} s later; jit {row['jit']['first']:.2f} s first, "
        f"{row['jit']['later']:.3f} s later; statistics differ by "
        f"{row['max_relative_difference']:.1e}",
        flush=True,
    )
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mini", action="store_true", help="one small network: seconds")
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=render.RESULTS)
    args = parser.parse_args(argv)
    if keras.backend.backend() != "jax":
        parser.error(f"run with KERAS_BACKEND=jax (this process has {keras.backend.backend()!r})")
    if args.calls < 2:
        parser.error(f"--calls must be at least 2 (first and later calls), got {args.calls}")
    import jax

    keras.utils.set_random_seed(args.seed)
    rows = [measure(*net, args.calls, args.seed) for net in networks(args.mini)]
    report = {
        "command": " ".join(
            ["KERAS_BACKEND=jax python benchmarks/batchnorm_time.py"]
            + list(argv if argv is not None else sys.argv[1:])
        ),
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "jax": jax.__version__,
        "machine": harness.host(),
        "device": jax.devices()[0].platform,
        "calls": args.calls,
        "rows": rows,
    }
    stem = os.path.join(args.out, "batchnorm_time" + ("_mini" if args.mini else ""))
    render.write_report(report, stem)
    figures.batchnorm_time(report, stem + ".png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
