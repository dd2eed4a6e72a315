"""Datasets for the demo, the tests and the benchmarks.

Two kinds of data come out of :func:`load`:

- ``"fashion_mnist"`` and ``"digits"``: in-memory ``(x, y)`` numpy arrays, ``x`` float32 NHWC in
  ``[0, 1]``, ``y`` int32 labels. These work offline and under every Keras backend; this module
  never imports TensorFlow for them.
- ``"cifar10"``, ``"cifar100"``, ``"imagenet2012"``: a batched, prefetched ``tf.data.Dataset``
  built by :func:`tfds_pipeline` with tensorflow-datasets (imported lazily, only here).

Where Fashion-MNIST comes from, in order:

1. a directory holding the four idx ``.gz`` files (``train-images-idx3-ubyte.gz``,
   ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``):
   the ``data_dir`` argument if given, else the ``BITAT_FASHION_MNIST_DIR`` environment
   variable, else ``/usr/share/datasets/fashion-mnist/`` (Debian's ``dataset-fashion-mnist``).
   The files are read by :func:`read_idx`, a small validating idx parser.
2. if that directory has none of the files: ``keras.datasets.fashion_mnist.load_data()``
   (downloads once into ``~/.keras/datasets``; needs internet the first time).
3. if both fail: :class:`DatasetUnavailableError`, saying where we looked and how to get the data.

A file that is present but corrupt raises :class:`CorruptDatasetError` naming the file; it never
falls back to a download silently.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import re
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

__all__ = [
    "DATASETS",
    "augmented_batches",
    "balanced_subset",
    "CorruptDatasetError",
    "DatasetUnavailableError",
    "fashion_mnist_source",
    "input_shape",
    "load",
    "num_classes",
    "read_idx",
    "tfds_pipeline",
]

#: Names accepted by :func:`load`.
DATASETS = ("fashion_mnist", "digits", "cifar10", "cifar100", "imagenet2012")

#: Names served as numpy arrays; the others are tensorflow-datasets pipelines.
NUMPY_DATASETS = ("fashion_mnist", "digits")
TFDS_DATASETS = ("cifar10", "cifar100", "imagenet2012")

SPLITS = ("train", "test")

FASHION_MNIST_ENV = "BITAT_FASHION_MNIST_DIR"
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist/"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
KERAS_DOWNLOAD = "keras-download"

DIGITS_TEST_SIZE = 0.25
DIGITS_RANDOM_STATE = 0

_NUM_CLASSES = {
    "fashion_mnist": 10,
    "digits": 10,
    "cifar10": 10,
    "cifar100": 100,
    "imagenet2012": 1000,
}
_INPUT_SHAPES = {
    "fashion_mnist": (28, 28, 1),
    "digits": (8, 8, 1),
    "cifar10": (32, 32, 3),
    "cifar100": (32, 32, 3),
    "imagenet2012": (224, 224, 3),
}
# Shuffle buffers (in examples, before decoding-heavy work); ImageNet's images are large.
_SHUFFLE_BUFFER = {"cifar10": 10_000, "cifar100": 10_000, "imagenet2012": 2_000}
_IMAGENET_SIZE = 224
_IMAGENET_RESIZE = 256  # shorter side before the 224 center crop (crop fraction 0.875)


class DatasetUnavailableError(RuntimeError):
    """The data could not be found locally nor downloaded (or prepared by tensorflow-datasets)."""


class CorruptDatasetError(ValueError):
    """A dataset file exists but is not valid (bad gzip, bad idx header, wrong size, ...).

    Attributes:
        path: the offending file (or files, joined), as a string.
    """

    def __init__(self, path, message):
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


# --------------------------------------------------------------------------------------------
# Names, shapes, classes.


def _canonical_name(name):
    if not isinstance(name, str):
        raise ValueError(f"Dataset name must be a string, one of {DATASETS}. Received: {name!r}")
    canonical = name.strip().lower().replace("-", "_")
    if canonical not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Expected one of {DATASETS}.")
    return canonical


def num_classes(name: str) -> int:
    """Number of classes of a supported dataset.

    Args:
        name: one of :data:`DATASETS`.

    Returns:
        The number of label classes (10, 100 or 1000).

    Example:
        >>> num_classes("cifar100")
        100
    """
    return _NUM_CLASSES[_canonical_name(name)]


def input_shape(name: str) -> tuple[int, int, int]:
    """Per-example input shape (height, width, channels) that :func:`load` produces.

    Args:
        name: one of :data:`DATASETS`.

    Returns:
        A ``(H, W, C)`` tuple; ImageNet's is the 224x224 crop of :func:`tfds_pipeline`.

    Example:
        >>> input_shape("fashion_mnist")
        (28, 28, 1)
    """
    return _INPUT_SHAPES[_canonical_name(name)]


def _check_split(split, name):
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r} for dataset {name!r}. Expected one of {SPLITS}.")


_TFDS_SPLIT_RE = re.compile(r"(train|test)(\[[^\]]*\])?")


def _check_tfds_split(split, name):
    if not isinstance(split, str) or not _TFDS_SPLIT_RE.fullmatch(split):
        raise ValueError(
            f"Unknown split {split!r} for dataset {name!r}. Expected one of {SPLITS}, "
            "optionally with a tensorflow-datasets slice such as 'train[:90%]'."
        )


def _check_limit(limit):
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 1:
        raise ValueError(f"`limit` must be None or a positive integer. Received: {limit!r}")
    return int(limit)


# --------------------------------------------------------------------------------------------
# idx files.

# idx type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (the MNIST/Fashion-MNIST format), gzip-compressed or not.

    The header is validated: two zero bytes, a known type code, the number of dimensions, the
    big-endian dimension sizes; the payload must be exactly ``prod(dims) * itemsize`` bytes.
    Compression is detected from the gzip magic bytes; a file named ``*.gz`` must be gzip.

    Args:
        path: path of the ``.gz`` or uncompressed idx file.

    Returns:
        A writable numpy array of shape ``dims`` in native byte order (uint8 for image and
        label files).

    Raises:
        FileNotFoundError: `path` does not exist.
        CorruptDatasetError: bad gzip stream, bad magic number, or wrong size; the message
            names the file.

    Example:
        >>> images = read_idx("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
        >>> images.shape, images.dtype
        ((10000, 28, 28), dtype('uint8'))
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise CorruptDatasetError(
                path, f"invalid or truncated gzip stream ({type(e).__name__}: {e})"
            ) from e
    elif path.endswith(".gz"):
        raise CorruptDatasetError(
            path,
            f"named .gz but not a gzip file (first bytes {raw[:4]!r}, expected b'\\x1f\\x8b...')",
        )
    if len(raw) < 4:
        raise CorruptDatasetError(
            path, f"too short for an idx header: {len(raw)} bytes, expected at least 4"
        )
    zero, code, ndim = raw[:2], raw[2], raw[3]
    if zero != b"\x00\x00" or code not in _IDX_DTYPES or ndim == 0:
        raise CorruptDatasetError(
            path,
            f"bad idx magic number 0x{raw[:4].hex()}; expected 0x0000TTNN with type code TT in "
            f"{{{', '.join(f'{c:02x}' for c in _IDX_DTYPES)}}} and NN >= 1 dimensions "
            "(e.g. 0x00000803 for images, 0x00000801 for labels)",
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptDatasetError(
            path,
            f"truncated idx header: {ndim} dimensions need {header} header bytes, "
            f"file has {len(raw)}",
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise CorruptDatasetError(
            path,
            f"{what}: header says shape {dims} of {dtype.name} = {expected} data bytes, "
            f"file has {actual}",
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=True)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST.


def _fashion_mnist_dir(data_dir):
    """Return (directory, how it was chosen) for the local lookup."""
    if data_dir is not None:
        return os.fspath(data_dir), "the data_dir argument"
    env = os.environ.get(FASHION_MNIST_ENV)
    if env:
        return env, f"${FASHION_MNIST_ENV}"
    return FASHION_MNIST_DEBIAN_DIR, "Debian's dataset-fashion-mnist default path"


def _local_fashion_mnist(data_dir):
    """Directory holding all four files, None if it holds none; raise if it holds some."""
    directory, _ = _fashion_mnist_dir(data_dir)
    names = [n for pair in FASHION_MNIST_FILES.values() for n in pair]
    present = [n for n in names if os.path.isfile(os.path.join(directory, n))]
    if not present:
        return None
    if len(present) < len(names):
        missing = [n for n in names if n not in present]
        raise CorruptDatasetError(
            directory,
            f"incomplete Fashion-MNIST directory: has {present} but is missing {missing}. "
            "Restore the missing files (apt-get install --reinstall dataset-fashion-mnist) or "
            "point data_dir / $" + FASHION_MNIST_ENV + " at a complete copy.",
        )
    return directory


def fashion_mnist_source(data_dir: str | os.PathLike | None = None) -> str:
    """Say where :func:`load` would take Fashion-MNIST from, without reading it.

    Args:
        data_dir: same meaning as in :func:`load`; None checks ``$BITAT_FASHION_MNIST_DIR``,
            then ``/usr/share/datasets/fashion-mnist/``.

    Returns:
        The directory holding the four idx ``.gz`` files, or ``"keras-download"`` when none
        are there and ``keras.datasets.fashion_mnist.load_data()`` would be used (it reuses
        its cache in ``~/.keras/datasets`` or downloads).

    Raises:
        CorruptDatasetError: the directory holds some but not all of the four files.

    Example:
        >>> fashion_mnist_source()
        '/usr/share/datasets/fashion-mnist/'
    """
    directory = _local_fashion_mnist(data_dir)
    return KERAS_DOWNLOAD if directory is None else directory


def _validate_fashion_arrays(images, labels, where):
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise CorruptDatasetError(
            where,
            f"expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}",
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise CorruptDatasetError(
            where, f"expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}"
        )
    if len(labels) != len(images):
        raise CorruptDatasetError(
            where, f"{len(images)} images but {len(labels)} labels; the counts must match"
        )
    if len(labels) and labels.max() >= 10:
        raise CorruptDatasetError(
            where, f"labels must be in [0, 9], found a maximum of {int(labels.max())}"
        )


def _read_fashion_mnist_dir(directory, split):
    image_name, label_name = FASHION_MNIST_FILES[split]
    image_path = os.path.join(directory, image_name)
    label_path = os.path.join(directory, label_name)
    images = read_idx(image_path)
    labels = read_idx(label_path)
    _validate_fashion_arrays(images, labels, f"{image_path} + {label_path}")
    return images, labels


def _download_fashion_mnist(split, directory, reason):
    import keras  # lazy: keras itself is backend-agnostic, its download needs no TensorFlow

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    except Exception as e:  # noqa: BLE001 - any failure here means "unavailable"
        raise DatasetUnavailableError(
            "Fashion-MNIST is not available.\n"
            f"  1. Looked for {list(FASHION_MNIST_FILES['train'] + FASHION_MNIST_FILES['test'])}"
            f" in {directory!r} ({reason}): not there.\n"
            f"  2. keras.datasets.fashion_mnist.load_data() failed: {type(e).__name__}: {e}\n"
            "To get it, any one of:\n"
            "  - sudo apt-get install dataset-fashion-mnist  (Debian/Ubuntu; files land in "
            f"{FASHION_MNIST_DEBIAN_DIR});\n"
            "  - connect to the internet once so Keras can download it to ~/.keras/datasets;\n"
            f"  - put the four idx .gz files in a directory and set {FASHION_MNIST_ENV}=DIR "
            "(or pass data_dir=DIR)."
        ) from e
    images, labels = (x_train, y_train) if split == "train" else (x_test, y_test)
    images = np.asarray(images)
    labels = np.asarray(labels)
    _validate_fashion_arrays(images, labels, "keras.datasets.fashion_mnist.load_data()")
    return images, labels


def _load_fashion_mnist(split, data_dir):
    directory = _local_fashion_mnist(data_dir)
    if directory is not None:
        images, labels = _read_fashion_mnist_dir(directory, split)
    else:
        looked, reason = _fashion_mnist_dir(data_dir)
        images, labels = _download_fashion_mnist(split, looked, reason)
    x = images.astype(np.float32)
    x /= np.float32(255.0)  # in place: the train split is 188 MB as float32
    return x[..., None], labels.astype(np.int32)


# --------------------------------------------------------------------------------------------
# scikit-learn digits.


def _load_digits(split):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data.astype(np.float32) / np.float32(16.0)).reshape(-1, 8, 8, 1)
    y = digits.target.astype(np.int32)
    train_idx, test_idx = train_test_split(
        np.arange(len(y)),
        test_size=DIGITS_TEST_SIZE,
        random_state=DIGITS_RANDOM_STATE,
        stratify=y,
    )
    idx = train_idx if split == "train" else test_idx
    return x[idx], y[idx]


# --------------------------------------------------------------------------------------------
# Subsets.


def balanced_subset(y, limit, seed):
    """Indices of a seeded, class-balanced subset of size ``limit``, in ascending order.

    A seeded permutation is taken; examples are then picked round-robin over classes (the
    first of each class in the permuted order, then the second of each, ...). Class counts
    thus differ by at most one while every class has examples left, and for a fixed seed a
    smaller subset is contained in a larger one.

    Args:
        y: the integer labels, shape ``(n,)``.
        limit: the subset's size (all ``n`` indices when ``limit >= n``).
        seed: the permutation's seed.

    Returns:
        The indices, a sorted int array.

    Example:
        >>> balanced_subset(np.array([0, 0, 0, 1]), 2, seed=0).tolist()  # doctest: +SKIP
        [2, 3]
    """
    n = len(y)
    if limit >= n:
        return np.arange(n)
    perm = np.random.default_rng(seed).permutation(n)
    y_perm = y[perm]
    rank = np.empty(n, dtype=np.int64)
    for c in np.unique(y_perm):
        where = np.flatnonzero(y_perm == c)
        rank[where] = np.arange(len(where))
    order = np.lexsort((np.arange(n), rank))  # by rank within class, then permuted position
    return np.sort(perm[order[:limit]])


# --------------------------------------------------------------------------------------------
# tensorflow-datasets pipelines.


def _import_tfds():
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "The 'cifar10', 'cifar100' and 'imagenet2012' datasets are tf.data pipelines and "
            "need tensorflow and tensorflow-datasets (pip install tensorflow-cpu "
            f"tensorflow-datasets). Import failed: {e}"
        ) from e
    return tf, tfds


def _shift_flip(tf, image, seed, shift, flip):
    """Zero-pad by ``shift``, randomly crop back (a random shift of up to ``shift`` pixels
    each way), then randomly flip left-right; stateless, from the pair ``seed``."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    if shift:
        image = tf.image.stateless_random_crop(
            tf.pad(image, [[shift, shift], [shift, shift], [0, 0]]),
            size=tf.shape(image),
            seed=crop_seed,
        )
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed) if flip else image


def _cifar_train_map(tf, image, seed):
    image = tf.image.convert_image_dtype(image, tf.float32)  # uint8 -> [0, 1]
    return _shift_flip(tf, image, seed, shift=4, flip=True)  # as in ResNet's CIFAR recipe


def _has_tensorflow():
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):  # blocked, or a None entry in sys.modules
        return False


def augmented_batches(x, y, *, batch_size, seed=0, shift=2, flip=True, pipeline="auto"):
    """Shuffled, augmented batches of numpy images: a training set for ``keras.Model.fit``,
    :func:`bitat_keras.progressive_fit` and the baselines.

    Every pass reshuffles and draws new augmentations: each image is shifted by up to
    ``shift`` pixels each way (zero padding, then a random crop back to its size) and, with
    ``flip``, mirrored left-right with probability 1/2. Seeded from ``seed``: the same
    arguments give the same sequence of batches. Two pipelines do the same augmentation
    with different random draws: tf.data (stateless TensorFlow ops, under any Keras
    backend) and numpy (no TensorFlow needed, e.g. JAX on a GPU machine without it).

    Args:
        x: float images ``(N, H, W, C)``.
        y: integer labels ``(N,)``.
        batch_size: examples per batch (the last batch of a pass may be smaller).
        seed: seeds the shuffle and the augmentation (an integer >= 0).
        shift: largest shift in pixels (0: none).
        flip: random left-right flips.
        pipeline: ``"tf.data"``, ``"numpy"``, or ``"auto"``: tf.data where TensorFlow is
            installed, else numpy.

    Returns:
        tf.data: a finite ``tf.data.Dataset`` of ``(images float32, labels int32)``
        batches, one pass over the data per iteration. numpy: a ``keras.utils.PyDataset``
        of the same batches, one pass per Keras epoch (fit it with ``shuffle=False``);
        :func:`bitat_keras.progressive_fit` and the baselines draw every phase's order
        and augmentations from its seed and the phase's.

    Example:
        >>> train = augmented_batches(x, y, batch_size=128, seed=0)
        >>> model.fit(train, epochs=30, shuffle=False)
    """
    x, y = np.asarray(x, dtype="float32"), np.asarray(y)
    if x.ndim != 4 or len(x) != len(y) or len(x) == 0:
        raise ValueError(
            "Expected images of shape (N, H, W, C) and N labels, N > 0. Received shapes "
            f"{x.shape} and {y.shape}"
        )
    if isinstance(shift, bool) or not isinstance(shift, int | np.integer) or shift < 0:
        raise ValueError(f"`shift` must be an integer >= 0. Received: {shift!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise ValueError(f"`batch_size` must be a positive integer. Received: {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"`seed` must be an integer >= 0. Received: {seed!r}")
    if pipeline not in ("auto", "tf.data", "numpy"):
        raise ValueError(f"`pipeline` must be 'auto', 'tf.data' or 'numpy'. Received: {pipeline!r}")
    if pipeline == "auto":
        pipeline = "tf.data" if _has_tensorflow() else "numpy"
    if pipeline == "numpy":
        from bitat_keras.fit.batches import SeededBatches

        y = y.astype("int32")
        return SeededBatches(x, y, int(batch_size), int(seed), augment=(int(shift), bool(flip)))
    import tensorflow as tf

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.from_tensor_slices((x, y.astype("int32")))
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = tf.data.Dataset.zip((ds, seeds))

    def augment(example, pair):
        image, label = example
        return _shift_flip(tf, image, pair, int(shift), bool(flip)), label

    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(int(batch_size)).prefetch(tf.data.AUTOTUNE)


def _imagenet_train_map(tf, image, seed):
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=(1, 1, 4)),
        seed=crop_seed,
        min_object_covered=0.1,
        aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.slice(image, begin, size)
    image = tf.image.resize(image, (_IMAGENET_SIZE, _IMAGENET_SIZE), method="bilinear")
    image = tf.clip_by_value(image / 255.0, 0.0, 1.0)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def _imagenet_eval_map(tf, image):
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = _IMAGENET_RESIZE / tf.reduce_min(shape)
    new_size = tf.cast(tf.math.round(shape * scale), tf.int32)
    image = tf.image.resize(image, new_size, method="bilinear")
    top = (new_size[0] - _IMAGENET_SIZE) // 2
    left = (new_size[1] - _IMAGENET_SIZE) // 2
    image = image[top : top + _IMAGENET_SIZE, left : left + _IMAGENET_SIZE, :]
    image = tf.ensure_shape(image, (_IMAGENET_SIZE, _IMAGENET_SIZE, 3))
    return tf.clip_by_value(image / 255.0, 0.0, 1.0)


def tfds_pipeline(
    name: str,
    split: str = "train",
    *,
    batch_size: int = 128,
    augment: bool | None = None,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    limit: int | None = None,
    shuffle_buffer: int | None = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """A batched ``tf.data`` pipeline of ``(image, label)`` from tensorflow-datasets.

    Images are float32 in ``[0, 1]``; labels int32. CIFAR images stay 32x32x3; with
    augmentation they are zero-padded by 4, randomly cropped back to 32x32 and randomly
    flipped left-right. ImageNet training images get an Inception-style random-resized crop
    (area 8-100 %, aspect 3/4-4/3) to 224x224 and a random flip; evaluation images are resized
    so the shorter side is 256 and center-cropped to 224x224. ImageNet's ``"test"`` split reads
    tfds' labelled ``"validation"`` split. The training split is shuffled (files and examples,
    reshuffled each epoch); augmentation uses stateless ops fed by ``tf.data.Dataset.random``,
    so a given `seed` gives the same pipeline every time it is built.

    tensorflow-datasets downloads and prepares the data the first time (CIFAR ~ 160 MB;
    ImageNet needs its tar files placed by hand in ``<data_dir>/downloads/manual``). Without
    internet that fails with a :class:`DatasetUnavailableError` that says so.

    Args:
        name: ``"cifar10"``, ``"cifar100"`` or ``"imagenet2012"``.
        split: ``"train"`` or ``"test"``, optionally with a tfds slice (``"train[:90%]"``).
        batch_size: examples per batch (positive int).
        augment: apply the training augmentation; None means "only for the train split".
        data_dir: tensorflow-datasets' data directory (None: its default,
            ``~/tensorflow_datasets``).
        seed: seed for file order, shuffling and augmentation.
        limit: keep only the first `limit` examples of the split (files then read in a fixed
            order, so the subset is the same every epoch), before shuffling.
        shuffle_buffer: shuffle buffer in examples (None: 10 000 for CIFAR, 2 000 for ImageNet).
        drop_remainder: drop the last incomplete batch (gives static shapes, e.g. for JAX).

    Returns:
        A ``tf.data.Dataset`` yielding ``(images[B, H, W, C] float32, labels[B] int32)``.

    Example:
        >>> ds = tfds_pipeline("cifar100", "train", batch_size=64)
        >>> model.fit(ds, epochs=10)
    """
    name = _canonical_name(name)
    if name not in TFDS_DATASETS:
        raise ValueError(
            f"tfds_pipeline serves {TFDS_DATASETS}; {name!r} is a numpy dataset: use "
            f"load({name!r}, split) instead."
        )
    _check_tfds_split(split, name)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise ValueError(f"`batch_size` must be a positive integer. Received: {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: {batch_size!r}")
    limit = _check_limit(limit)
    tf, tfds = _import_tfds()

    is_train = split.startswith("train")
    augment = is_train if augment is None else bool(augment)
    tfds_split = split
    if name == "imagenet2012" and split.startswith("test"):
        tfds_split = "validation" + split[len("test") :]
    shuffle_files = is_train and limit is None
    try:
        ds = tfds.load(
            name,
            split=tfds_split,
            as_supervised=True,
            data_dir=None if data_dir is None else os.fspath(data_dir),
            shuffle_files=shuffle_files,
            read_config=tfds.ReadConfig(shuffle_seed=seed),
        )
    except Exception as e:  # noqa: BLE001 - re-raised with context below
        raise DatasetUnavailableError(
            f"tensorflow-datasets could not load {name!r} (split {tfds_split!r}, data_dir "
            f"{data_dir!r}). tfds must download and prepare it on first use, which needs "
            "internet access and disk space (ImageNet also needs its tar files placed in "
            "<data_dir>/downloads/manual). If it is already prepared elsewhere, pass "
            f"data_dir=... pointing at that tensorflow_datasets directory. "
            f"Original error: {type(e).__name__}: {e}"
        ) from e

    if limit is not None:
        ds = ds.take(limit)
    if is_train:
        buffer = shuffle_buffer if shuffle_buffer is not None else _SHUFFLE_BUFFER[name]
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)

    def to_label(label):
        return tf.cast(label, tf.int32)

    autotune = tf.data.AUTOTUNE
    if augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds))
        train_map = _imagenet_train_map if name == "imagenet2012" else _cifar_train_map

        def preprocess(example, pair):
            image, label = example
            return train_map(tf, image, pair), to_label(label)

    elif name == "imagenet2012":

        def preprocess(image, label):
            return _imagenet_eval_map(tf, image), to_label(label)

    else:

        def preprocess(image, label):
            return tf.image.convert_image_dtype(image, tf.float32), to_label(label)

    ds = ds.map(preprocess, num_parallel_calls=autotune)
    ds = ds.batch(int(batch_size), drop_remainder=drop_remainder)
    return ds.prefetch(autotune)


# --------------------------------------------------------------------------------------------
# The entry point.


def load(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    seed: int = 0,
    **tfds_kwargs: Any,
) -> tuple[np.ndarray, np.ndarray] | tf.data.Dataset:
    """Load a dataset split.

    - ``"fashion_mnist"``: ``x`` float32 ``(N, 28, 28, 1)`` in ``[0, 1]`` (pixel / 255), ``y``
      int32 in ``[0, 9]``; 60 000 train / 10 000 test. Read from `data_dir`, else
      ``$BITAT_FASHION_MNIST_DIR``, else ``/usr/share/datasets/fashion-mnist/``; if that
      directory has none of the four idx ``.gz`` files, Keras' download is used (see
      :func:`fashion_mnist_source`).
    - ``"digits"``: scikit-learn's 8x8 digits, ``x`` float32 ``(N, 8, 8, 1)`` = pixel / 16 in
      ``[0, 1]``, ``y`` int32 in ``[0, 9]``. The 1797 images are split once with
      ``sklearn.model_selection.train_test_split(test_size=0.25, random_state=0,
      stratify=y)``: 1347 train / 450 test, the same on every call and independent of
      `seed`. `data_dir` is ignored (the data ships inside scikit-learn).
    - ``"cifar10"``, ``"cifar100"``, ``"imagenet2012"``: returns
      ``tfds_pipeline(name, split, data_dir=data_dir, seed=seed, limit=limit, **tfds_kwargs)``,
      a batched ``tf.data.Dataset`` (keywords ``batch_size=128``, ``augment=None``, ...).

    For the numpy datasets, `limit` keeps a seeded, class-balanced subset: a permutation drawn
    with ``numpy.random.default_rng(seed)`` is walked round-robin over classes, so class counts
    differ by at most one; the result is in the original order, identical for the same
    ``(limit, seed)``, and nested (a smaller limit is a subset of a larger one). A `limit` at
    least the split's size returns the whole split.

    Args:
        name: one of :data:`DATASETS` (``-`` and upper case are accepted: ``"Fashion-MNIST"``).
        split: ``"train"`` or ``"test"`` (tfds datasets also accept slices like ``"train[:10%]"``).
        data_dir: directory with the Fashion-MNIST idx files, or tensorflow-datasets' data dir.
        limit: keep only this many examples (None: all).
        seed: seed of the `limit` subset (numpy datasets) or of shuffling/augmentation (tfds).
        **tfds_kwargs: `batch_size`, `augment`, `shuffle_buffer`, `drop_remainder` for the
            tfds datasets; an error for the numpy datasets.

    Returns:
        ``(x, y)`` numpy arrays, or a ``tf.data.Dataset`` of ``(x, y)`` batches.

    Raises:
        ValueError: unknown name, split, or bad `limit`.
        CorruptDatasetError: a Fashion-MNIST file is present but invalid (names the file).
        DatasetUnavailableError: the data is neither local nor downloadable.

    Example:
        >>> x, y = load("fashion_mnist", "test", limit=1000)
        >>> x.shape, x.dtype, y.dtype
        ((1000, 28, 28, 1), dtype('float32'), dtype('int32'))
        >>> train = load("cifar100", "train", batch_size=256)  # tf.data.Dataset
    """
    name = _canonical_name(name)
    if name in TFDS_DATASETS:
        return tfds_pipeline(name, split, data_dir=data_dir, seed=seed, limit=limit, **tfds_kwargs)
    if tfds_kwargs:
        raise ValueError(
            f"{sorted(tfds_kwargs)} only apply to the tf.data datasets {TFDS_DATASETS}; "
            f"{name!r} returns numpy arrays (batch them with model.fit(batch_size=...)). "
            f"Received: {tfds_kwargs!r}"
        )
    _check_split(split, name)
    limit = _check_limit(limit)
    if name == "fashion_mnist":
        x, y = _load_fashion_mnist(split, data_dir)
    else:
        x, y = _load_digits(split)
    if limit is not None:
        idx = balanced_subset(y, limit, seed)
        x, y = x[idx], y[idx]
    return x, y
