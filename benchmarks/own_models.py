"""Users' own models: a plain Conv-BatchNorm-ReLU CNN, its LeakyReLU twin and
``keras.applications.MobileNet(alpha=0.25, weights=None)``, each trained to full precision
on Fashion-MNIST, then binarized by naive STE and by BiTAT with ``BiTATConfig()``'s
defaults.

The ReLU CNN is the case that went to chance before input thresholds (every binarized
conv's input is >= 0 after a ReLU); its LeakyReLU twin never needed them, so the gap
between the two is what the thresholds leave. Naive STE trains as many epochs as BiTAT
does in all (about the same wall time; each row records its seconds).

Run one model at a time (results merge into ``results/own_models.json``)::

    python benchmarks/own_models.py --models cnn_relu,cnn_leaky --seed 0
    python benchmarks/own_models.py --models mobilenet --seed 0
"""

import argparse
import os
import time

import figures  # beside this file: on sys.path when run as a script
import harness
import keras
import numpy as np
import render

import bitat_keras as bk
from bitat_keras import datasets
from bitat_keras.fit import baselines, training

RESULTS = render.RESULTS
# 20,000 training images, the next 5,000 held out for validation; the teacher's recipe;
# naive STE at BiTAT's default learning rate, not tuned here (render.py's report says so).
SETUP = render.OWN_MODELS
TRAIN, VAL = SETUP["train"], SETUP["val"]
FP_EPOCHS, FP_LR, BATCH = SETUP["fp_epochs"], SETUP["fp_lr"], SETUP["batch"]
NAIVE_LR = SETUP["naive_lr"]


def cnn(activation):
    """Conv-BN-activation blocks, max pooling twice: 5 convs, 4 of them binarized."""
    layers = keras.layers
    act = {"relu": layers.ReLU, "leaky": lambda: layers.LeakyReLU(0.1)}[activation]
    stack = [keras.Input((28, 28, 1))]
    for width, pool in ((16, True), (32, False), (32, True), (64, False), (64, False)):
        stack += [layers.Conv2D(width, 3, padding="same", use_bias=False)]
        stack += [layers.BatchNormalization(), act()]
        if pool:
            stack.append(layers.MaxPooling2D())
    stack += [layers.GlobalAveragePooling2D(), layers.Dense(10)]
    return keras.Sequential(stack, name=f"cnn_{activation}")


def mobilenet():
    """``keras.applications.MobileNet`` at alpha 0.25 on 32x32x3 inputs, a new head."""
    base = keras.applications.MobileNet(
        (32, 32, 3), alpha=0.25, weights=None, include_top=False, pooling="avg"
    )
    return keras.Model(base.inputs, keras.layers.Dense(10)(base.output), name="mobilenet")


MODELS = {
    "cnn_relu": (lambda: cnn("relu"), None),
    "cnn_leaky": (lambda: cnn("leaky"), None),
    # Fashion-MNIST padded to 32x32 and repeated to three channels
    "mobilenet": (
        mobilenet,
        lambda x: np.repeat(np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))), 3, -1),
    ),
}


def splits(prepare):
    x, y = datasets.load("fashion_mnist", "train")
    xt, yt = datasets.load("fashion_mnist", "test")
    if prepare is not None:
        x, xt = prepare(x[: TRAIN + VAL]), prepare(xt)
    return (x[:TRAIN], y[:TRAIN]), (x[TRAIN : TRAIN + VAL], y[TRAIN : TRAIN + VAL]), (xt, yt)


def scores(model, val, test):
    return {
        "val": training.accuracy(model, *val),
        "test": training.accuracy(model, *test),
    }


def run(name, seed):
    build, prepare = MODELS[name]
    train, val, test = splits(prepare)
    keras.utils.set_random_seed(seed)
    fp = build()
    start = time.perf_counter()
    training.train_full_precision(fp, train, FP_EPOCHS, BATCH, learning_rate=FP_LR)
    rows = {"fp": {**scores(fp, val, test), "seconds": time.perf_counter() - start}}
    print(name, "fp", rows["fp"], flush=True)

    config = bk.BiTATConfig(seed=seed)
    keras.utils.set_random_seed(seed)
    result = bk.progressive_fit(fp, train, config=config, verbose=0)
    rows["bitat"] = {**scores(result.model, val, test), "seconds": result.seconds}
    layers = len(result.plan.binarized)
    epochs = config.epochs_per_layer * layers + config.final_epochs
    print(name, "bitat", rows["bitat"], flush=True)

    keras.utils.set_random_seed(seed)
    bnn, seconds = baselines.naive_ste(
        fp, train, epochs=epochs, learning_rate=NAIVE_LR, batch_size=config.batch_size
    )
    rows["naive_ste"] = {**scores(bnn, val, test), "seconds": seconds, "epochs": epochs}
    rows["naive_ste"]["learning_rate"] = NAIVE_LR
    print(name, "naive_ste", rows["naive_ste"], flush=True)
    return {
        "seed": seed,
        "rows": rows,
        "binarized": result.plan.binarized,
        "thresholded": result.plan.thresholded,
        "plan": result.plan.table(),
        "bitat_epochs": epochs,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="cnn_relu,cnn_leaky,mobilenet")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    results = harness.earlier_report(os.path.join(RESULTS, "own_models.json")) or {"runs": {}}
    for name in args.models.split(","):
        results["runs"].setdefault(name, {})[str(args.seed)] = run(name, args.seed)
        results["command"] = "python benchmarks/own_models.py --models MODEL --seed N"
        results["machine"] = harness.host()
        results["versions"] = f"keras {keras.__version__} ({keras.backend.backend()} backend)"
        render.write_report(results, os.path.join(RESULTS, "own_models"))
        figures.own_models(results, os.path.join(RESULTS, "own_models.png"))


if __name__ == "__main__":
    main()
