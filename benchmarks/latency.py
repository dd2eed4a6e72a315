"""Single-image CPU latency of the LCE flatbuffer against float and int8 TFLite, every model
timed through the same call.

    python benchmarks/latency.py                      # three networks, ~10 min on 2 cores
    python benchmarks/latency.py --networks demo_28x28 --runs 50

Every flatbuffer (LCE, float TFLite, int8 TFLite) runs in LCE's interpreter, which executes
TFLite's builtin ops as well as LCE's, through the same call: one input array copied in,
``invoke``, the output copied out. Each model is timed with every interpreter option that
applies to it (LCE's indirect BGEMM kernel for binary convs, the XNNPack delegate for float
and int8 ops) at 1 and 2 threads, ``runs`` timed calls after ``warmup`` calls; the report
gives the median and the 90th percentile of each setting and compares the best setting of
each model. Weights are random (with random biases and BatchNorm offsets, so binary-conv
outputs do not tie at 0): latency, sizes and the op graph do not depend on their values.

Networks: the demo/`cpu`-preset network on 28x28x1 (Fashion-MNIST), ReActNet-A (MobileNetV1,
width 1.0) on 32x32x3 (CIFAR) and on 224x224x3 (ImageNet, where the paper deploys). Writes
benchmarks/results/latency.json and .md.
"""

import argparse
import json
import os
import sys
import time

import harness  # beside this file: on sys.path when run as a script
import keras
import numpy as np
import render

# name -> reactnet_mobilenet arguments; interpreter options tried for each kind of model,
# the fastest compared (presets.json).
NETWORKS = harness.SETTINGS["latency"]["networks"]
OPTIONS = harness.SETTINGS["latency"]["options"]


def untie(model, seed):
    """Random biases, BatchNorm offsets and means, as a trained net has. At initialisation
    they are all 0, so binary-conv outputs (integer sums) hit exact ties at 0, where Keras'
    and LCE's float rounding may take different signs: a parity check would then measure
    ties, not the conversion."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for w in layer.weights:
            if len(w.shape) == 1 and "variance" not in w.path:
                w.assign(w + rng.normal(0.0, 0.1, w.shape).astype("float32"))


def latency_ms(flatbuffer, x, *, threads=1, runs=200, warmup=20, **options):
    """Median and 90th percentile (ms) of one single-input inference in LCE's interpreter.

    Args:
        flatbuffer: model bytes (LCE, float or int8 TFLite; inputs stay float32).
        x: one input of shape (1, ...), float32.
        threads: interpreter threads.
        runs: timed calls after ``warmup`` untimed ones.
        options: LCE interpreter options: ``use_indirect_bgemm``, ``use_xnnpack``.

    Returns:
        ``{"median": ms, "p90": ms}``.
    """
    from bitat_keras.export import LceInterpreter

    if runs < 1 or warmup < 0:
        raise ValueError(f"Expected runs >= 1 and warmup >= 0. Received: {runs}, {warmup}")
    interpreter = LceInterpreter(flatbuffer, num_threads=threads, **options)
    inputs = [np.ascontiguousarray(x, dtype=np.float32)]
    for _ in range(warmup):
        interpreter.invoke(inputs)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        interpreter.invoke(inputs)
        times[i] = time.perf_counter() - start
    return {"median": float(np.median(times) * 1e3), "p90": float(np.percentile(times, 90) * 1e3)}


def compare(flatbuffers, x, *, runs=200, threads=(1, 2)):
    """Time each ``{"lce" | "float" | "int8": bytes}`` model with each of its options.

    Returns:
        ``{"settings": {"<model>/<option>/<t>t": {"median", "p90"}}, "best": {"<model>_<t>t":
        {"option", "median", "p90"}}}``.
    """
    settings, best = {}, {}
    for kind, data in flatbuffers.items():
        for t in threads:
            for option, kwargs in OPTIONS[kind].items():
                timing = latency_ms(data, x, threads=t, runs=runs, **kwargs)
                settings[f"{kind}/{option}/{t}t"] = timing
                key = f"{kind}_{t}t"
                if key not in best or timing["median"] < best[key]["median"]:
                    best[key] = {"option": option, **timing}
    return {"settings": settings, "best": best}


def convert_three(fp, bnn, calibration):
    """``{"lce": the binary model strictly converted by LCE, "float": the full-precision twin
    as float TFLite, "int8": the twin as int8 TFLite calibrated on ``calibration``}``."""
    from bitat_keras import export

    return {
        "lce": export.convert_keras_model(bnn),
        "float": export.convert_float_tflite(fp),
        "int8": export.convert_float_tflite(fp, int8=True, representative_data=calibration),
    }


def float_work_between_binary_convs(flatbuffer):
    """Which ops run between consecutive ``LceBconv2d`` ops (in execution order) of the
    main subgraph, counted over all gaps; and the ops before the first and after the last."""
    import bitat_keras as bk

    ops = bk.inspect_tflite(flatbuffer)["subgraphs"][0]["operators"]
    where = [i for i, op in enumerate(ops) if op == "LceBconv2d"]
    between = {}
    for a, b in zip(where, where[1:], strict=False):
        for op in ops[a + 1 : b]:
            between[op] = between.get(op, 0) + 1
    return {
        "binary_convs": len(where),
        "between": dict(sorted(between.items(), key=lambda kv: -kv[1])),
        "before_first": ops[: where[0]] if where else ops,
        "after_last": ops[where[-1] + 1 :] if where else [],
    }


def measure(name, runs, seed=0):
    """Build, convert, check and time one network of ``NETWORKS``."""
    import bitat_keras as bk

    spec = NETWORKS[name]
    keras.utils.set_random_seed(seed)
    fp = bk.models.reactnet_mobilenet(**spec, name=f"{name}_fp")
    untie(fp, seed)
    bnn = bk.binarize(fp)
    rng = np.random.default_rng(seed)
    calibration = rng.uniform(-1, 1, (32, *spec["input_shape"])).astype("float32")
    x = calibration[:1]
    start = time.perf_counter()
    flatbuffers = convert_three(fp, bnn, calibration)
    convert_seconds = time.perf_counter() - start
    timing = compare(flatbuffers, x, runs=runs)
    best = timing["best"]
    return {
        "input_shape": list(spec["input_shape"]),
        "params": int(fp.count_params()),
        "binary_layers": len(bk.models.eligible_layers(fp)),
        "size_kib": {k: len(v) / 1024 for k, v in flatbuffers.items()},
        "ops": {k: bk.inspect_tflite(v)["ops"] for k, v in flatbuffers.items()},
        "lce_float_work": float_work_between_binary_convs(flatbuffers["lce"]),
        "parity_max_abs_diff": float(bk.verify_tflite(bnn, flatbuffers["lce"], x)),
        "convert_seconds": convert_seconds,
        **timing,
        "lce_over_float_1t": best["lce_1t"]["median"] / best["float_1t"]["median"],
        "lce_over_int8_1t": best["lce_1t"]["median"] / best["int8_1t"]["median"],
    }


def run(networks, runs, out_dir):
    start = time.perf_counter()
    report = {
        "command": "python benchmarks/latency.py " + " ".join(sys.argv[1:]),
        "machine": harness.host(),
        "backend": keras.backend.backend(),
        "runs": runs,
        "networks": {},
    }
    for name in networks:
        print(f"[latency] {name}", flush=True)
        report["networks"][name] = measure(name, runs)
    big = report["networks"].get("reactnet_a_224x224")
    report["goals"] = {}
    if big is not None:
        report["goals"]["lce_at_most_0.5x_float_1t_at_224x224"] = big["lce_over_float_1t"] <= 0.5
    report["total_seconds"] = time.perf_counter() - start
    render.write_report(report, os.path.join(out_dir, "latency"))
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--networks", default=",".join(NETWORKS), help=f"comma list of {sorted(NETWORKS)}"
    )
    parser.add_argument("--runs", type=int, default=200, help="timed runs per setting")
    parser.add_argument("--out", default=render.RESULTS)
    args = parser.parse_args(argv)
    names = [n for n in args.networks.split(",") if n]
    unknown = sorted(set(names) - set(NETWORKS))
    if unknown or not names:
        parser.error(f"--networks must name some of {sorted(NETWORKS)}. Received: {names}")
    if keras.backend.backend() != "tensorflow":
        parser.error(
            f"conversion needs KERAS_BACKEND=tensorflow. Received: {keras.backend.backend()}"
        )
    report = run(names, args.runs, args.out)
    print(json.dumps(report["goals"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
