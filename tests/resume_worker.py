"""Run progressive_fit on a tiny model with a checkpoint dir; save the final weights.

Used by test_resume.py in a subprocess: python tests/resume_worker.py CKPT_DIR OUT.npz
Fault injection (environment): KILL_AT_BATCH=N kills the process (SIGKILL) at the N-th
training batch counted over every phase of this process; KILL_IN_SAVE=1 kills it inside
Checkpointer.save, after the new weights are written under their temporary name and before
they are renamed into place.
"""

import os
import signal
import sys

import keras
import numpy as np
from keras import ops

import bitat_keras as bk


class KillAtBatch(keras.callbacks.Callback):
    def __init__(self, n):
        super().__init__()
        self.n, self.seen = n, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.n:
            os.kill(os.getpid(), signal.SIGKILL)


def kill_inside_save():
    real = os.replace

    def replace(src, dst):
        if os.fspath(dst).endswith(".weights.h5"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst)

    os.replace = replace


def main(checkpoint_dir, out):
    callbacks = []
    if os.environ.get("KILL_AT_BATCH"):
        callbacks.append(KillAtBatch(int(os.environ["KILL_AT_BATCH"])))
    if os.environ.get("KILL_IN_SAVE"):
        kill_inside_save()
    keras.utils.set_random_seed(0)
    x, y = bk.datasets.load("digits", "train")
    model = bk.models.reactnet_mobilenet(
        (8, 8, 1), num_classes=10, width_multiplier=0.25, blocks=[(64, 1), (64, 1)]
    )
    config = bk.BiTATConfig(
        epochs_per_layer=1,
        finetune_epochs=1,
        final_epochs=1,
        batch_size=32,
        groups=8,
        stats_images=32,
        stats_rows=256,
        bn_recalibration_batches=2,
        seed=3,
    )
    result = bk.progressive_fit(
        model,
        (x[:128], y[:128]),
        config=config,
        checkpoint_dir=checkpoint_dir,
        callbacks=callbacks,
        verbose=2,
    )
    np.savez(out, *[ops.convert_to_numpy(w) for w in result.model.weights])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
