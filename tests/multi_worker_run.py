"""One process of the runs that tests/test_multi_worker.py compares (run as a script).

    python multi_worker_run.py ENGINE METHOD OUT [--index I --addresses A,B]

ENGINE: "tensorflow" (several processes: ``tf.distribute.MultiWorkerMirroredStrategy`` from
``TF_CONFIG``) or "jax" (several processes: ``keras.distribution.initialize`` and
``DataParallel`` over every process's CPU device, JAX's gloo CPU collectives). Without
``--addresses`` the same run is made in this one process, on one device, or with
``--devices 2`` over two devices of this process (``MirroredStrategy`` over two logical
CPUs; ``DataParallel`` over two XLA host devices). METHOD: "bitat"
(``progressive_fit`` with per-layer checkpoints in OUT/ckpt), "naive_ste" or "reactnet".
Every process writes its weights and losses to OUT/<tag><process index>.npz|json.
"""

import argparse
import json
import os
import signal
import sys

parser = argparse.ArgumentParser()
parser.add_argument("engine", choices=("tensorflow", "jax"))
parser.add_argument("method", choices=("bitat", "naive_ste", "reactnet"))
parser.add_argument("out")
parser.add_argument("--index", type=int, default=0)
parser.add_argument("--addresses", default=None, help="host:port of every process")
parser.add_argument("--tag", default="single", help="file names: OUT/<tag><index>.npz|json")
parser.add_argument("--devices", type=int, default=1, help="devices of one process (1 or 2)")
args = parser.parse_args()
signal.alarm(600)  # never outlive the test that started it (SIGALRM ends the process)
addresses = args.addresses.split(",") if args.addresses else []
os.environ["KERAS_BACKEND"] = args.engine

if args.engine == "tensorflow":
    if addresses:
        cluster = {"worker": addresses}
        os.environ["TF_CONFIG"] = json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": args.index}}
        )
    import tensorflow as tf

    strategy = None
    if addresses:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif args.devices > 1:  # the same global batch over two devices of this one process
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.devices
        )
        strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(args.devices)])
else:
    if args.devices > 1:
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    import jax
    import keras

    if addresses:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        keras.distribution.initialize(addresses[0], len(addresses), args.index)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import bitat_keras as bk  # noqa: E402
from bitat_keras.fit import baselines  # noqa: E402

x, y = bk.datasets.load("digits", "train")
x, y = x[:64], y[:64]
config = bk.BiTATConfig(
    epochs_per_layer=1,
    finetune_epochs=1,
    final_epochs=1,
    batch_size=32,
    groups=8,
    stats_images=32,
    stats_rows=256,
    bn_recalibration_batches=2,
    distillation="all",
)


def fp_model():
    """A float stem, three binarizable 3x3 convs, the classifier: three layers for
    Algorithm 1, the final phase, and a checkpoint after each."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inputs)
    h = keras.layers.BatchNormalization(name="bn0")(h)
    for i in (1, 2, 3):
        h = bk.layers.LearnableBias(name=f"move{i}")(h)
        h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name=f"conv{i}")(h)
        h = keras.layers.BatchNormalization(name=f"bn{i}")(h)
        h = bk.layers.RPReLU(name=f"rprelu{i}")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="classifier")(h))
    if args.engine == "tensorflow":  # one BatchNorm over the global batch, as on one device
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
    return model


def run():
    assert bk.multi_worker.process_count() == max(len(addresses), 1)
    assert bk.multi_worker.process_index() == args.index
    model = fp_model()
    if args.method == "bitat":
        state = os.path.join(args.out, f"ckpt_{args.tag}", "state.json")
        if os.path.exists(state):
            with open(state) as f:
                print("RESUMED-AFTER", json.load(f)["completed"], flush=True)
        result = bk.progressive_fit(
            model,
            (x, y),
            config=config,
            verbose=0,
            checkpoint_dir=os.path.join(args.out, f"ckpt_{args.tag}"),
        )
        losses = [value for h in result.history for value in h["loss"]]
        phases = [h["phase"] for h in result.history]
        lr = max(config.learning_rate, config.finetune_learning_rate)
        return result.model, losses, phases, lr
    method = getattr(baselines, "reactnet_two_step" if args.method == "reactnet" else "naive_ste")
    keras.utils.set_random_seed(0)
    bnn, _ = method(model, (x, y), epochs=2, learning_rate=4e-3, batch_size=32)
    return bnn, [], [], 4e-3


if args.engine == "tensorflow" and strategy is not None:
    with strategy.scope():
        bnn, losses, phases, lr = run()
else:
    if addresses or args.devices > 1:
        keras.distribution.set_distribution(keras.distribution.DataParallel())
    bnn, losses, phases, lr = run()

index = args.index
weights = {v.path: ops.convert_to_numpy(v) for v in bnn.weights}
np.savez(os.path.join(args.out, f"{args.tag}{index}.npz"), **weights)
record = {
    "phases": phases,
    "losses": losses,
    "trainable": [v.path for v in bnn.trainable_weights],
    "binary": bk.models.eligible_layers(bnn),
    "steps": 2 * 2 * 9,  # an upper bound: 2 steps an epoch, at most 9 epochs in all
    "lr": lr,
}
with open(os.path.join(args.out, f"{args.tag}{index}.json"), "w") as f:
    json.dump(record, f)
print("RUN-OK", args.engine, args.method, index, flush=True)
sys.exit(0)
