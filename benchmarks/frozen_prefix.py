"""What a quantize phase could save by its frozen layers, on a benchmark network: the share
of the network's multiply-adds from each binarized layer up (what the phase's backward pass
covers), and, at the last tensor below each binarized layer that cuts the network in two,
the milliseconds of a training
step of the whole network with the layers below the cut frozen (run in every step, BatchNorm
in training mode, as in BiTAT's phases) against a step of the layers above alone on their
stored inputs (what storing the frozen layers' outputs once per phase would leave).

    python benchmarks/frozen_prefix.py --network cpu --images 4096
    python benchmarks/frozen_prefix.py --network full --images 1024

The network is the full-precision one (timing does not depend on its weights). Results go to
``results/frozen_prefix_<network>.{json,md}``; the JSON records the command and the machine.
"""

import argparse
import os
import sys
import time
import warnings

import cost
import harness  # beside this file: on sys.path when run as a script
import keras
import numpy as np
import render

import bitat_keras as bk
from bitat_keras import datasets


def multiply_adds(model):
    """``[(layer name, multiply-adds per sample)]`` of ``model``'s convolutions and dense
    layers, in graph order: kernel size times output positions (a depthwise kernel has one
    input channel per output)."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D):
            positions = int(np.prod(layer.output.shape[1:-1]))
            out.append((layer.name, int(np.prod(layer.kernel.shape)) * positions))
        elif isinstance(layer, keras.layers.Dense):
            out.append((layer.name, int(np.prod(layer.kernel.shape))))
    return out


def shares_from(macs):
    """``{layer name: share}``: the share of the multiply-adds ``macs`` (``multiply_adds``)
    in each layer and the layers after it."""
    total = sum(m for _, m in macs)
    shares, rest = {}, total
    for name, m in macs:
        shares[name] = rest / total
        rest -= m
    return shares


def cuts(model, names):
    """For each layer of ``names``, the last layer below it whose output alone feeds
    everything above (a model from that output to the network's output builds): where the
    frozen layers of that layer's phase could hand over their output. Without repeats."""
    order = [layer.name for layer in model.layers]
    out = []
    for name in names:
        for layer in reversed(model.layers[1 : order.index(name)]):
            try:
                keras.Model(layer.output, model.output)
            except ValueError:
                continue
            if layer.name not in out:
                out.append(layer.name)
            break
    return out


def step_ms(model, x, y, batch, epochs):
    """Median milliseconds of ``model``'s training steps over ``epochs`` passes of ``(x, y)``."""
    model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
    timer = cost.StepTimer()
    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, shuffle=False, callbacks=[timer])
    return timer.summary()[0]["median_ms"]


def measure_cut(model, name, x, y, batch, epochs):
    """One cut: steps of the whole network with the layers up to ``name`` frozen (their
    variables not trainable one by one, so BatchNorm stays in training mode), the store
    pass, and steps of the layers above on the stored outputs."""
    order = [layer.name for layer in model.layers]
    below = set(order[: order.index(name) + 1])
    try:
        for layer in model.layers:
            for v in layer.weights:
                v.trainable = layer.name not in below
        whole = step_ms(model, x, y, batch, epochs)
    finally:
        for v in model.weights:
            v.trainable = True
    prefix = keras.Model(model.inputs, model.get_layer(name).output)
    prefix.predict(x[:batch], batch_size=batch, verbose=0)  # traced before the clock starts
    start = time.perf_counter()
    stored = prefix.predict(x, batch_size=batch, verbose=0)
    store_seconds = time.perf_counter() - start
    above = step_ms(
        keras.Model(model.get_layer(name).output, model.output), stored, y, batch, epochs
    )
    return {
        "whole_ms": whole,
        "above_ms": above,
        "store_seconds": store_seconds,
        "stored_kib_per_image": stored.nbytes / len(x) / 1024,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", choices=sorted(cost.NETWORKS), default="cpu")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default=render.RESULTS)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    settings = cost.NETWORKS[args.network]
    x, y = datasets.load(settings["dataset"], "train", limit=args.images, seed=0)
    keras.utils.set_random_seed(0)
    model = harness.network(settings, x.shape[1:], datasets.num_classes(settings["dataset"]))
    binarized = list(bk.models.eligible_layers(model))
    macs = multiply_adds(model)
    share_of = shares_from(macs)
    report = {
        "command": " ".join(["python", "benchmarks/frozen_prefix.py", *(argv or sys.argv[1:])]),
        "machine": harness.host(),
        "versions": cost.versions(),
        "network": args.network,
        "images": len(x),
        "batch": settings["batch"],
        "epochs": args.epochs,
        "multiply_adds": sum(m for _, m in macs),
        "shares_from_layer": {name: share_of[name] for name in binarized},
        "cuts": {},
    }
    order = [layer.name for layer in model.layers]
    for name in cuts(model, binarized):
        above = (share_of[n] for n in share_of if order.index(n) > order.index(name))
        row = measure_cut(model, name, x, y, settings["batch"], args.epochs)
        row["share_above"] = next(above, 0.0)
        report["cuts"][name] = row
        print(
            f"[frozen_prefix] {name}: {row['whole_ms']:.0f} / {row['above_ms']:.0f} ms", flush=True
        )
    base = os.path.join(args.out, f"frozen_prefix_{args.network}")
    print(render.write_report(report, base))


if __name__ == "__main__":
    main()
