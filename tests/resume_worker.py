"""Run progressive_fit on a tiny model with a checkpoint dir; save the final weights.

Used by test_resume.py in a subprocess: python tests/resume_worker.py CKPT_DIR OUT.npz
"""

import sys

import keras
import numpy as np
from keras import ops

import bitat_keras as bk


def main(checkpoint_dir, out):
    keras.utils.set_random_seed(0)
    x, y = bk.datasets.load("digits", "train")
    model = bk.models.reactnet_mobilenet(
        (8, 8, 1), num_classes=10, width_multiplier=0.25, blocks=[(64, 1), (64, 1)]
    )
    config = bk.BiTATConfig(
        epochs_per_layer=1,
        finetune_epochs=1,
        batch_size=32,
        groups=8,
        stats_images=32,
        stats_rows=256,
        bn_recalibration_batches=2,
        seed=3,
    )
    result = bk.progressive_fit(
        model, (x[:128], y[:128]), config=config, checkpoint_dir=checkpoint_dir, verbose=0
    )
    np.savez(out, *[ops.convert_to_numpy(w) for w in result.model.weights])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
