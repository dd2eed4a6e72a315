"""Porting larq model code to Keras 3: change the import, keep the model.

    python examples/larq_port.py                       # Fashion-MNIST, 2 epochs, ~1 min
    python examples/larq_port.py --dataset digits --epochs 1

larq does not import under Keras 3. ``import bitat_keras as lq`` instead of
``import larq as lq`` keeps the names this model uses: ``lq.layers.QuantConv2D`` with larq's
arguments and defaults, the quantizer aliases ("ste_sign", "approx_sign", "swish_sign",
"magnitude_aware_sign"), the "weight_clip" constraint, ``lq.models.summary`` and a
sign-flip logger in the spirit of larq's ``QuantizationLogger``. The model below is written
the way larq's documentation writes binary networks (full-precision first and last layers,
binary convs with BatchNorm after each); it trains a few steps, converts strictly to an LCE
flatbuffer (every binary conv an ``LceBconv2d``) and checks parity with LCE's interpreter.
"""

import argparse
import json

import keras

import bitat_keras as lq  # was: import larq as lq


def larq_style_model(input_shape, classes):
    """A binary CNN written with larq's names."""
    binary = dict(
        input_quantizer="ste_sign",
        kernel_quantizer="ste_sign",
        kernel_constraint="weight_clip",
        use_bias=False,
    )
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(32, 3, padding="same", use_bias=False),  # stays float
            keras.layers.BatchNormalization(scale=False),
            lq.layers.QuantConv2D(64, 3, padding="same", pad_values=1.0, **binary),
            keras.layers.MaxPooling2D(2),
            keras.layers.BatchNormalization(scale=False),
            lq.layers.QuantConv2D(
                64,
                3,
                padding="same",
                pad_values=1.0,
                **{**binary, "kernel_quantizer": "magnitude_aware_sign"},  # fmt: skip
            ),
            keras.layers.BatchNormalization(scale=False),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(classes),  # stays float (LCE has no binary dense kernel)
        ],
        name="larq_style",
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "digits"])
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=2, help="training epochs (batch 64)")
    parser.add_argument("--out", default="larq_port.tflite", help="flatbuffer path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    x, y = lq.datasets.load(args.dataset, "train", limit=args.train_size, seed=args.seed)
    xt, yt = lq.datasets.load(args.dataset, "test", limit=2000, seed=args.seed)
    model = larq_style_model(x.shape[1:], lq.datasets.num_classes(args.dataset))
    stats = lq.models.summary(model)  # larq: lq.models.summary(model)

    model.compile(keras.optimizers.Adam(1e-3), lq.training.task_loss(), metrics=["accuracy"])
    flips = lq.callbacks.FlipRateLogger()
    model.fit(x, y, batch_size=64, epochs=args.epochs, callbacks=[flips], verbose=2)
    accuracy = lq.training.accuracy(model, xt, yt)

    flatbuffer = lq.convert_keras_model(model)  # strict: a binary conv left float raises
    with open(args.out, "wb") as f:
        f.write(flatbuffer)
    report = {
        "test_accuracy": accuracy,
        "flip_rate_last_epoch": flips.history[-1],
        "lce_ops": lq.inspect_tflite(flatbuffer)["ops"],
        "parity_max_abs_diff": lq.verify_tflite(model, flatbuffer, xt[:16]),
        "flatbuffer_kib": len(flatbuffer) / 1024,
        "summary_memory_kib": stats["total"]["memory_kib"],
        "float_memory_kib": stats["float_memory_kib"],
    }
    print(json.dumps(report, indent=1, default=float))
    return report


if __name__ == "__main__":
    main()
