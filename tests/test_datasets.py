"""Tests for bitat_keras.datasets: local Fashion-MNIST, the idx parser, digits, tfds pipelines."""

import gzip
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from bitat_keras import datasets as D

REPO_ROOT = Path(__file__).resolve().parents[1]
DEBIAN_DIR = Path(D.FASHION_MNIST_DEBIAN_DIR)
HAVE_DEBIAN = all(
    (DEBIAN_DIR / n).is_file() for pair in D.FASHION_MNIST_FILES.values() for n in pair
)
needs_debian = pytest.mark.skipif(
    not HAVE_DEBIAN,
    reason=f"Fashion-MNIST idx files not in {DEBIAN_DIR} (apt-get install dataset-fashion-mnist)",
)


# ------------------------------------------------------------------------------------------
# Helpers: tiny idx files.


def idx_bytes(array, code=0x08):
    """Serialize `array` as an idx file (big-endian header, then the raw data)."""
    array = np.asarray(array)
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    dtype = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    return header + array.astype(dtype).tobytes()


def write_gz(path, payload):
    path.write_bytes(gzip.compress(payload))
    return path


def fake_fashion_dir(directory, n_train=12, n_test=6):
    """Write a tiny but valid Fashion-MNIST directory (four idx .gz files)."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        image_name, label_name = D.FASHION_MNIST_FILES[split]
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255
        write_gz(directory / image_name, idx_bytes(images))
        write_gz(directory / label_name, idx_bytes(np.arange(n) % 10))
    return directory


@pytest.fixture
def no_download(monkeypatch):
    """Make Keras' Fashion-MNIST download fail, and record that it was attempted."""
    calls = []

    def fail():
        calls.append(1)
        raise Exception("URL fetch failure: no network in this test")  # like keras' get_file

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", fail)
    monkeypatch.delenv(D.FASHION_MNIST_ENV, raising=False)
    return calls


# ------------------------------------------------------------------------------------------
# Fashion-MNIST from the Debian package.


@pytest.fixture(scope="module")
def fashion_test_split():
    return D.load("fashion_mnist", "test", data_dir=DEBIAN_DIR)


@needs_debian
def test_fashion_mnist_debian_shapes_and_ranges(fashion_test_split):
    x, y = fashion_test_split
    assert x.shape == (10000, 28, 28, 1) and x.dtype == np.float32
    assert y.shape == (10000,) and y.dtype == np.int32
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    assert np.bincount(y).tolist() == [1000] * 10
    assert D.fashion_mnist_source(DEBIAN_DIR) == str(DEBIAN_DIR)


@needs_debian
def test_fashion_mnist_train_split(monkeypatch):
    monkeypatch.delenv(D.FASHION_MNIST_ENV, raising=False)
    assert D.fashion_mnist_source() == D.FASHION_MNIST_DEBIAN_DIR
    x, y = D.load("fashion_mnist", "train", limit=500, seed=3)
    assert x.shape == (500, 28, 28, 1) and y.shape == (500,)
    assert np.bincount(y, minlength=10).tolist() == [50] * 10  # class-balanced


@needs_debian
def test_fashion_mnist_limit_reproducible(fashion_test_split):
    x_all, y_all = fashion_test_split
    a = D.load("fashion_mnist", "test", data_dir=DEBIAN_DIR, limit=123, seed=7)
    b = D.load("fashion_mnist", "test", data_dir=DEBIAN_DIR, limit=123, seed=7)
    c = D.load("fashion_mnist", "test", data_dir=DEBIAN_DIR, limit=123, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    counts = np.bincount(a[1], minlength=10)
    assert counts.sum() == 123 and counts.max() - counts.min() <= 1
    # Every subset row is a row of the full split.
    flat_all = {row.tobytes() for row in x_all.reshape(len(x_all), -1)}
    assert all(row.tobytes() in flat_all for row in a[0].reshape(123, -1))


# ------------------------------------------------------------------------------------------
# Source order, with a tiny fake directory.


def test_env_var_directory_is_used(tmp_path, monkeypatch, no_download):
    fake = fake_fashion_dir(tmp_path / "fmnist")
    monkeypatch.setenv(D.FASHION_MNIST_ENV, str(fake))
    assert D.fashion_mnist_source() == str(fake)
    x, y = D.load("fashion_mnist", "train")
    assert x.shape == (12, 28, 28, 1) and x.dtype == np.float32
    assert y.tolist() == [i % 10 for i in range(12)] and y.dtype == np.int32
    assert x[0, 0, 0, 0] == 0.0 and x[0, 0, 1, 0] == 1.0
    assert D.load("fashion_mnist", "test")[0].shape == (6, 28, 28, 1)
    assert not no_download


def test_data_dir_overrides_env(tmp_path, monkeypatch, no_download):
    monkeypatch.setenv(D.FASHION_MNIST_ENV, str(fake_fashion_dir(tmp_path / "env", n_train=3)))
    explicit = fake_fashion_dir(tmp_path / "explicit", n_train=5)
    assert D.fashion_mnist_source(explicit) == str(explicit)
    assert D.load("fashion_mnist", data_dir=explicit)[0].shape[0] == 5


def test_keras_download_fallback(tmp_path, monkeypatch):
    images = np.zeros((4, 28, 28), np.uint8)
    labels = np.array([0, 1, 2, 9], np.uint8)
    monkeypatch.setattr(
        keras.datasets.fashion_mnist,
        "load_data",
        lambda: ((images, labels), (images[:2], labels[:2])),
    )
    assert D.fashion_mnist_source(tmp_path) == D.KERAS_DOWNLOAD
    x, y = D.load("fashion_mnist", "test", data_dir=tmp_path)
    assert x.shape == (2, 28, 28, 1) and y.tolist() == [0, 1]


def test_missing_everything_raises_helpful_error(tmp_path, no_download):
    with pytest.raises(D.DatasetUnavailableError) as info:
        D.load("fashion_mnist", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert D.FASHION_MNIST_ENV in message
    assert "internet" in message
    assert "URL fetch failure" in message  # the download's own error is kept
    assert isinstance(info.value, RuntimeError)
    assert no_download == [1]


def test_corrupt_file_is_not_replaced_by_a_download(tmp_path, no_download):
    fake = fake_fashion_dir(tmp_path)
    bad = fake / D.FASHION_MNIST_FILES["train"][0]
    bad.write_bytes(bad.read_bytes()[:100])  # truncated gzip
    with pytest.raises(D.CorruptDatasetError, match=bad.name):
        D.load("fashion_mnist", "train", data_dir=fake)
    assert not no_download


def test_incomplete_directory_is_an_error(tmp_path, no_download):
    fake = fake_fashion_dir(tmp_path)
    (fake / D.FASHION_MNIST_FILES["test"][1]).unlink()
    with pytest.raises(D.CorruptDatasetError, match="missing.*t10k-labels"):
        D.fashion_mnist_source(fake)
    with pytest.raises(D.CorruptDatasetError, match="incomplete"):
        D.load("fashion_mnist", "train", data_dir=fake)
    assert not no_download


def test_image_label_count_mismatch(tmp_path, no_download):
    fake = fake_fashion_dir(tmp_path)
    write_gz(fake / D.FASHION_MNIST_FILES["train"][1], idx_bytes(np.zeros(11)))
    with pytest.raises(D.CorruptDatasetError, match="12 images but 11 labels"):
        D.load("fashion_mnist", "train", data_dir=fake)


def test_wrong_image_shape_or_label_values(tmp_path, no_download):
    fake = fake_fashion_dir(tmp_path)
    write_gz(fake / D.FASHION_MNIST_FILES["test"][0], idx_bytes(np.zeros((6, 27, 28))))
    with pytest.raises(D.CorruptDatasetError, match=r"\(N, 28, 28\)"):
        D.load("fashion_mnist", "test", data_dir=fake)
    write_gz(fake / D.FASHION_MNIST_FILES["train"][1], idx_bytes(np.full(12, 10)))
    with pytest.raises(D.CorruptDatasetError, match="labels must be in"):
        D.load("fashion_mnist", "train", data_dir=fake)


# ------------------------------------------------------------------------------------------
# The idx parser.


@pytest.mark.parametrize(
    "array,code",
    [
        (np.arange(24, dtype=np.uint8).reshape(2, 3, 4), 0x08),
        (np.array([-3, 5], np.int8), 0x09),
        (np.array([[1, -2], [300, 4]]), 0x0B),
        (np.array([70000, -1]), 0x0C),
        (np.array([0.5, -1.25], np.float32), 0x0D),
        (np.array([1e-300]), 0x0E),
    ],
)
@pytest.mark.parametrize("compressed", [True, False])
def test_read_idx_valid(tmp_path, array, code, compressed):
    path = tmp_path / ("a.idx.gz" if compressed else "a.idx")
    payload = idx_bytes(array, code)
    path.write_bytes(gzip.compress(payload) if compressed else payload)
    out = D.read_idx(path)
    np.testing.assert_array_equal(out, array)
    assert out.shape == array.shape and out.dtype.isnative and out.flags.writeable


def test_read_idx_bad_magic(tmp_path):
    path = write_gz(tmp_path / "bad-magic.gz", b"\x00\x01\x08\x01" + b"\x00\x00\x00\x01" + b"x")
    with pytest.raises(D.CorruptDatasetError, match=r"bad-magic\.gz.*bad idx magic number"):
        D.read_idx(path)
    path = write_gz(tmp_path / "bad-type.gz", b"\x00\x00\x07\x01" + b"\x00\x00\x00\x01" + b"x")
    with pytest.raises(D.CorruptDatasetError, match="0x00000701"):
        D.read_idx(path)


def test_read_idx_truncated_data(tmp_path):
    path = write_gz(tmp_path / "short.gz", idx_bytes(np.zeros((3, 28, 28)))[:-5])
    with pytest.raises(D.CorruptDatasetError, match=r"short\.gz.*truncated.*2352 data bytes"):
        D.read_idx(path)


def test_read_idx_truncated_header_and_trailing_bytes(tmp_path):
    path = write_gz(tmp_path / "hdr.gz", b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(D.CorruptDatasetError, match=r"hdr\.gz.*truncated idx header"):
        D.read_idx(path)
    path = write_gz(tmp_path / "long.gz", idx_bytes(np.zeros(4)) + b"\x00")
    with pytest.raises(D.CorruptDatasetError, match=r"long\.gz.*trailing bytes"):
        D.read_idx(path)


def test_read_idx_count_mismatch_between_files(tmp_path):
    # Each file valid on its own; the pair disagrees (see also test_image_label_count_mismatch).
    fake = fake_fashion_dir(tmp_path, n_train=4)
    write_gz(fake / D.FASHION_MNIST_FILES["train"][1], idx_bytes(np.zeros(5)))
    with pytest.raises(D.CorruptDatasetError, match="4 images but 5 labels") as info:
        D.load("fashion_mnist", data_dir=fake)
    assert "train-labels-idx1-ubyte.gz" in info.value.path


def test_read_idx_bad_gzip(tmp_path):
    not_gzip = tmp_path / "garbage.gz"
    not_gzip.write_bytes(b"this is not gzip data at all")
    with pytest.raises(D.CorruptDatasetError, match=r"garbage\.gz.*not a gzip file"):
        D.read_idx(not_gzip)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress(idx_bytes(np.arange(1000) % 256))[:-12])
    with pytest.raises(D.CorruptDatasetError, match=r"cut\.gz.*gzip"):
        D.read_idx(cut)
    crc = tmp_path / "crc.gz"
    blob = bytearray(gzip.compress(idx_bytes(np.zeros(10))))
    blob[-8] ^= 0xFF  # corrupt the CRC32 trailer
    crc.write_bytes(bytes(blob))
    with pytest.raises(D.CorruptDatasetError, match=r"crc\.gz.*gzip"):
        D.read_idx(crc)
    assert issubclass(D.CorruptDatasetError, ValueError)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        D.read_idx(tmp_path / "nope.gz")


# ------------------------------------------------------------------------------------------
# scikit-learn digits.


def test_digits_shapes_and_split():
    x_train, y_train = D.load("digits", "train")
    x_test, y_test = D.load("digits", "test")
    assert x_train.shape == (1347, 8, 8, 1) and x_test.shape == (450, 8, 8, 1)
    assert len(x_train) + len(x_test) == 1797
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert set(np.unique(y_test)) == set(range(10))
    # A partition: train + test is exactly sklearn's 1797 images, as a multiset of rows.
    from sklearn.datasets import load_digits

    full = (load_digits().data / 16.0).astype(np.float32).reshape(-1, 64)
    both = np.concatenate([x_train, x_test]).reshape(-1, 64)
    assert sorted(r.tobytes() for r in both) == sorted(r.tobytes() for r in full)
    # Deterministic: the same arrays on every call, whatever the seed.
    again = D.load("digits", "train", seed=123)
    np.testing.assert_array_equal(again[0], x_train)
    np.testing.assert_array_equal(again[1], y_train)


def test_digits_limit():
    x, y = D.load("digits", "train", limit=95, seed=1)
    assert x.shape == (95, 8, 8, 1)
    counts = np.bincount(y, minlength=10)
    assert counts.max() - counts.min() <= 1
    small = D.load("digits", "train", limit=40, seed=1)
    rows = {r.tobytes() for r in x.reshape(95, -1)}
    assert all(r.tobytes() in rows for r in small[0].reshape(40, -1))  # nested subsets
    assert D.load("digits", "test", limit=10_000)[0].shape == (450, 8, 8, 1)


# ------------------------------------------------------------------------------------------
# Names, splits, helpers.


def test_unknown_name():
    with pytest.raises(ValueError, match=r"Unknown dataset 'mnist'.*fashion_mnist.*imagenet2012"):
        D.load("mnist")
    with pytest.raises(ValueError, match="Unknown dataset"):
        D.num_classes("svhn")


@pytest.mark.parametrize("name", ["fashion_mnist", "digits"])
@pytest.mark.parametrize("split", ["validation", "Train", "train[:10]", None])
def test_bad_split(name, split):
    with pytest.raises(
        ValueError, match=re.escape(f"Unknown split {split!r}") + ".*'train', 'test'"
    ):
        D.load(name, split)


@pytest.mark.parametrize("limit", [0, -3, 2.5, True, "10"])
def test_bad_limit(limit):
    with pytest.raises(ValueError, match=r"`limit` must be None or a positive integer"):
        D.load("digits", limit=limit)


def test_tfds_keywords_rejected_for_numpy_datasets():
    with pytest.raises(ValueError, match="batch_size.*numpy arrays"):
        D.load("digits", batch_size=32)


def test_helpers():
    assert D.DATASETS == ("fashion_mnist", "digits", "cifar10", "cifar100", "imagenet2012")
    assert [D.num_classes(n) for n in D.DATASETS] == [10, 10, 10, 100, 1000]
    assert D.input_shape("fashion_mnist") == (28, 28, 1)
    assert D.input_shape("digits") == (8, 8, 1)
    assert D.input_shape("cifar100") == (32, 32, 3)
    assert D.input_shape("imagenet2012") == (224, 224, 3)
    assert D.num_classes("Fashion-MNIST") == 10


# ------------------------------------------------------------------------------------------
# tensorflow-datasets pipelines (offline, with tfds' mock data).


@pytest.fixture
def tfds_mock():
    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow_datasets.testing  # noqa: F401 - tfds.testing must be imported explicitly

    with tfds.testing.mock_data(num_examples=16):
        yield tfds


def _batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_cifar100_pipeline(tfds_mock):
    import tensorflow as tf

    ds = D.load("cifar100", "train", batch_size=8)
    assert isinstance(ds, tf.data.Dataset)
    batches = _batches(ds)
    assert len(batches) == 2
    for x, y in batches:
        assert x.shape == (8, 32, 32, 3) and x.dtype == np.float32
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert y.shape == (8,) and y.dtype == np.int32
        assert ((0 <= y) & (y < 100)).all()


def test_cifar100_test_split_not_augmented(tfds_mock):
    plain = _batches(D.tfds_pipeline("cifar100", "test", batch_size=16))
    raw = tfds_mock.load("cifar100", split="test", as_supervised=True)
    raw_x = np.stack([x.numpy() for x, _ in raw]).astype(np.float32) / 255.0
    np.testing.assert_allclose(plain[0][0], raw_x, atol=1e-6)
    assert plain[0][0].shape == (16, 32, 32, 3)


def test_cifar100_augmentation_keeps_shapes_and_changes_pixels(tfds_mock):
    plain = _batches(D.tfds_pipeline("cifar100", "test", batch_size=16, augment=False))
    augmented = _batches(D.tfds_pipeline("cifar100", "test", batch_size=16, augment=True))
    again = _batches(D.tfds_pipeline("cifar100", "test", batch_size=16, augment=True))
    (xp, yp), (xa, ya) = plain[0], augmented[0]
    assert xa.shape == xp.shape == (16, 32, 32, 3) and xa.dtype == np.float32
    assert 0.0 <= xa.min() and xa.max() <= 1.0
    np.testing.assert_array_equal(ya, yp)  # augmentation leaves labels (and order) alone
    assert not np.allclose(xa, xp)
    np.testing.assert_array_equal(again[0][0], xa)  # same seed, same augmentation


def test_tfds_limit_and_seeded_shuffle(tfds_mock):
    batches = _batches(D.load("cifar10", "train", batch_size=4, limit=6))
    assert [x.shape[0] for x, _ in batches] == [4, 2]
    a = _batches(D.load("cifar10", "train", batch_size=16, seed=1))
    b = _batches(D.load("cifar10", "train", batch_size=16, seed=1))
    np.testing.assert_array_equal(a[0][1], b[0][1])
    np.testing.assert_array_equal(a[0][0], b[0][0])


def test_imagenet_pipeline_shapes(tfds_mock):
    for split in ("train", "test"):  # mock images are small and odd-sized: crops must resize
        x, y = _batches(D.load("imagenet2012", split, batch_size=4, limit=4))[0]
        assert x.shape == (4, 224, 224, 3) and x.dtype == np.float32
        assert 0.0 <= x.min() and x.max() <= 1.0 and (y < 1000).all()


def test_tfds_split_validation(tfds_mock):
    with pytest.raises(ValueError, match=r"Unknown split 'validation'.*'train', 'test'"):
        D.load("cifar100", "validation")
    with pytest.raises(ValueError, match="batch_size"):
        D.load("cifar100", "train", batch_size=0)
    with pytest.raises(ValueError, match="numpy dataset"):
        D.tfds_pipeline("digits", "train")


def test_tfds_failure_has_clear_prefix(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'www.cs.toronto.edu'")

    monkeypatch.setattr(tfds, "load", offline)
    with pytest.raises(D.DatasetUnavailableError) as info:
        D.load("cifar10", "train", data_dir="/nonexistent/tfds")
    message = str(info.value)
    assert message.startswith("tensorflow-datasets could not load 'cifar10'")
    assert "download and prepare" in message and "data_dir" in message
    assert "ConnectionError: Failed to resolve" in message  # the original error is kept
    assert isinstance(info.value.__cause__, ConnectionError)


# ------------------------------------------------------------------------------------------
# No TensorFlow for the numpy datasets under JAX.


def test_numpy_datasets_do_not_import_tensorflow_under_jax():
    pytest.importorskip("jax")
    code = textwrap.dedent(
        """
        import sys
        import bitat_keras.datasets as D
        x, y = D.load("digits")
        assert x.shape == (1347, 8, 8, 1), x.shape
        import keras
        assert keras.backend.backend() == "jax", keras.backend.backend()
        roots = ("tensorflow", "tensorflow_datasets")
        bad = sorted(m for m in sys.modules if m.split(".")[0] in roots)
        assert not bad, bad[:10]
        print("OK")
        """
    )
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("OK")


# ------------------------------------------------------------------ augmented_batches


def _shifted(image, dy, dx):
    """``image`` moved by (dy, dx) pixels with zero fill: the oracle of a padded crop."""
    out = np.zeros_like(image)
    h, w = image.shape[:2]
    src = image[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
    out[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    return out


def _passes(ds, count):
    """``count`` passes over augmented batches as lists of numpy ``(images, labels)``."""
    if isinstance(ds, keras.utils.PyDataset):  # the numpy pipeline: one pass per epoch
        passes = []
        for _ in range(count):
            passes.append([tuple(np.asarray(t) for t in ds[i]) for i in range(len(ds))])
            ds.on_epoch_end()
        return passes
    return [[(b[0].numpy(), b[1].numpy()) for b in ds] for _ in range(count)]


@pytest.mark.parametrize("pipeline", ["tf.data", "numpy"])
def test_augmented_batches_are_shifts_and_flips_of_the_inputs(pipeline):
    """Every output image is its input shifted by at most `shift` pixels (zero fill),
    maybe mirrored; every image appears once per pass; a pass reshuffles and redraws;
    the same seed gives the same batches; shifts and flips both occur."""
    rng = np.random.default_rng(0)
    x = rng.random((10, 6, 5, 1)).astype("float32") + 0.1  # no zero pixels
    y = np.arange(10)

    def make(**kwargs):
        return D.augmented_batches(x, y, pipeline=pipeline, **kwargs)

    ds = make(batch_size=4, seed=3, shift=2, flip=True)
    assert len(_passes(make(batch_size=4, seed=3), 1)[0]) == 3
    passes = _passes(ds, 2)
    kinds = set()
    for batches in passes:
        labels = np.concatenate([labels for _, labels in batches])
        assert sorted(labels) == list(range(10))
        for images, labels in batches:
            for image, label in zip(images, labels, strict=True):
                candidates = {
                    (mirrored, dy, dx): _shifted(src, dy, dx)
                    for mirrored, src in ((False, x[label]), (True, x[label][:, ::-1]))
                    for dy in range(-2, 3)
                    for dx in range(-2, 3)
                }
                found = [k for k, c in candidates.items() if np.array_equal(image, c)]
                assert found
                kinds.add((found[0][0], found[0][1:] != (0, 0)))
    assert {m for m, _ in kinds} == {False, True} and any(s for _, s in kinds)
    first, second = passes
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, second, strict=True))
    again = _passes(make(batch_size=4, seed=3, shift=2, flip=True), 1)[0]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
    other = _passes(make(batch_size=4, seed=4, shift=2, flip=True), 1)[0]
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other, strict=True))
    images, labels = _passes(make(batch_size=10, seed=0, shift=0, flip=False), 1)[0][0]
    np.testing.assert_array_equal(images, x[labels])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=np.zeros((3, 4, 4)), y=np.zeros(3)), "shape"),
        (dict(x=np.zeros((3, 4, 4, 1)), y=np.zeros(2)), "shape"),
        (dict(x=np.zeros((3, 4, 4, 1)), y=np.zeros(3), shift=-1), "shift"),
        (dict(x=np.zeros((3, 4, 4, 1)), y=np.zeros(3), batch_size=0), "batch_size"),
        (dict(x=np.zeros((3, 4, 4, 1)), y=np.zeros(3), seed=-1), "seed"),
        (dict(x=np.zeros((3, 4, 4, 1)), y=np.zeros(3), pipeline="torch"), "pipeline"),
    ],
)
def test_augmented_batches_bad_input(kwargs, match):
    kwargs.setdefault("batch_size", 2)
    x, y = kwargs.pop("x"), kwargs.pop("y")
    with pytest.raises(ValueError, match=match):
        D.augmented_batches(x, y, **kwargs)


def test_training_data_from_numpy_augmented_batches():
    """As training data, augmented numpy batches keep their batch size and augmentation;
    each phase seed draws its own order and augmentations, the statistics samples are the
    images as given, and the checkpoint digest tells them from the plain arrays."""
    from bitat_keras.fit.data import TrainData, sample_images

    rng = np.random.default_rng(1)
    x = rng.random((12, 6, 6, 1)).astype("float32") + 0.1  # no zero pixels
    y = np.arange(12) % 3
    inputs = keras.Input((6, 6, 1))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    batches = D.augmented_batches(x, y, batch_size=5, seed=2, pipeline="numpy")
    data = TrainData(batches, model, batch_size=64)
    assert data.batch_size == 5 and data.steps == 3
    assert data.digest != TrainData((x, y), model, batch_size=5).digest

    def phase(seed):
        kwargs, steps = data.phase_kwargs(1, seed)
        assert steps == 3 and kwargs["shuffle"] is False
        return [kwargs["x"][i] for i in range(len(kwargs["x"]))]

    first, again, other = phase(0), phase(0), phase(1)
    assert [len(b[0]) for b in first] == [5, 5, 2]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other, strict=True))
    images = np.concatenate([b[0] for b in first])
    assert np.any(images == 0)  # shifted in zeros: augmented
    sample = sample_images(batches, 4, seed=0)
    assert all(any(np.array_equal(s, row) for row in x) for s in sample)


def test_sample_weight_with_numpy_augmented_batches_is_refused():
    from bitat_keras.fit.data import with_sample_weight

    batches = D.augmented_batches(
        np.zeros((4, 4, 4, 1)), np.zeros(4), batch_size=2, pipeline="numpy"
    )
    with pytest.raises(ValueError, match="carry no weights"):
        with_sample_weight(batches, np.ones(4))


def test_fit_input_yields_keras_batches_and_trains_to_the_same_weights():
    """Under TensorFlow SeededBatches reach Keras as a tf.data pipeline without autotuning:
    the batches Keras draws from the PyDataset (pass after pass, the first after one
    on_epoch_end), and the same trained weights as Keras' own conversion (the oracle)."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the pipeline replaces the PyDataset under TensorFlow only")
    from bitat_keras.fit.batches import SeededBatches, fit_input

    rng = np.random.default_rng(0)
    x = rng.normal(size=(23, 5, 5, 2)).astype("float32")
    y = rng.integers(0, 3, size=23)
    w = rng.random(23).astype("float32")
    expected = SeededBatches(x, y, 8, seed=4, sample_weight=w)
    passes = []
    for _ in range(2):
        expected.on_epoch_end()
        passes.append([expected[i] for i in range(len(expected))])
    kwargs = fit_input({"x": SeededBatches(x, y, 8, seed=4, sample_weight=w), "shuffle": False})
    dataset = kwargs["x"]
    assert kwargs["shuffle"] is False and kwargs["steps_per_epoch"] == 3
    assert dataset.options().autotune.enabled is False
    got = [tuple(np.asarray(t) for t in batch) for batch in dataset.take(6)]  # pass after pass
    for g, e in zip(got, passes[0] + passes[1], strict=True):
        for a, b in zip(g, e, strict=True):
            np.testing.assert_array_equal(a, b)

    def trained(**kwargs):
        keras.utils.set_random_seed(1)
        inputs = keras.Input((5, 5, 2))
        model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
        model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
        model.fit(**kwargs, epochs=3, shuffle=False, verbose=0)
        return model.get_weights()

    ours = trained(**fit_input({"x": SeededBatches(x, y, 8, seed=4)}))
    for a, b in zip(ours, trained(x=SeededBatches(x, y, 8, seed=4)), strict=True):
        np.testing.assert_array_equal(a, b)
