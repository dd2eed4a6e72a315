"""Uniform access to training data given as numpy arrays, augmented numpy batches
(``SeededBatches`` with ``augment``) or a tf.data.Dataset."""

import math

import numpy as np

from bitat_keras.fit import backend
from bitat_keras.fit.batches import SeededBatches
from bitat_keras.fit.checkpoint import data_digest
from bitat_keras.fit.distill import teacher_outputs
from bitat_keras.fit.multi_worker import batch_part, broadcast


def _is_tf_dataset(data):
    return type(data).__module__.startswith("tensorflow") and hasattr(data, "element_spec")


def sample_images(data, n, seed):
    """Up to ``n`` float32 input images from ``data``: an array of images, a tuple whose
    first item is one (``(x, y)``, ``(x, y, sample_weight)``), or a ``tf.data.Dataset``
    of batches (its first batches; the first item of each element). Arrays are sampled
    without replacement, seeded."""
    if isinstance(data, tuple | list):
        data = data[0]
    if isinstance(data, SeededBatches):
        data = data.x  # the images as given, before augmentation
    if _is_tf_dataset(data):
        out, total = [], 0
        for element in data:
            x = element[0] if isinstance(element, tuple | list) else element
            out.append(np.asarray(x))
            total += len(out[-1])
            if total >= n:
                break
        return np.concatenate(out)[:n].astype("float32")
    x = np.asarray(data)
    n = min(n, len(x))
    idx = np.random.default_rng(seed).choice(len(x), size=n, replace=False)
    return x[np.sort(idx)].astype("float32", copy=False)


def _is_pair_or_triple(data):
    return isinstance(data, tuple | list) and len(data) in (2, 3)


def with_sample_weight(data, sample_weight, what="train_data"):
    """``data`` with the per-sample weights ``sample_weight`` attached: ``(x, y)`` arrays
    become ``(x, y, sample_weight)`` (validated by ``TrainData``); ``data`` unchanged when
    ``sample_weight`` is None. Raises a ValueError for a ``tf.data.Dataset`` (it must yield
    ``(x, y, sample_weight)`` batches itself) or data that already hold weights."""
    if sample_weight is None:
        return data
    if _is_tf_dataset(data):
        raise ValueError(
            f"`sample_weight` cannot be given with a tf.data.Dataset `{what}`: make the "
            "dataset yield (x, y, sample_weight) batches instead (as keras.Model.fit)."
        )
    if isinstance(data, SeededBatches):
        raise ValueError(
            f"`sample_weight` cannot be given with augmented numpy batches as `{what}`: "
            "they carry no weights. Give (x, y) arrays with the weights, or a "
            "tf.data.Dataset that yields (x, y, sample_weight) batches."
        )
    if isinstance(data, tuple | list) and len(data) == 3:
        raise ValueError(
            f"`sample_weight` was given but `{what}` is already an (x, y, sample_weight) "
            "tuple: pass the weights one way only."
        )
    if isinstance(data, tuple | list) and len(data) == 2:
        return (data[0], data[1], sample_weight)
    return data  # TrainData explains what it accepts


def _check_weights(w, n, what, where):
    """Per-sample weights ``w`` for ``n`` samples: shape (n,), numeric, finite, >= 0."""
    w = np.asarray(w)
    if w.ndim != 1 or len(w) != n:
        hint = " Flatten them with .reshape(-1)." if w.size == n and w.ndim > 1 else ""
        raise ValueError(
            f"`{what}`: sample_weight must have shape ({n},), one weight per sample of "
            f"{where}. Received shape {w.shape}.{hint}"
        )
    if not (np.issubdtype(w.dtype, np.number) or w.dtype == bool) or np.iscomplexobj(w):
        raise ValueError(
            f"`{what}`: sample_weight must hold real numbers. Received dtype {w.dtype}."
        )
    w = w.astype("float32")
    if not np.all(np.isfinite(w)):
        raise ValueError(
            f"`{what}`: sample_weight must be finite and >= 0. Received NaN or inf values."
        )
    if np.any(w < 0):
        raise ValueError(
            f"`{what}`: sample_weight must be finite and >= 0. Received negative values "
            f"(min {w.min()})."
        )
    return w


class TrainData:
    """Validated (x, y) or (x, y, sample_weight) data for one model.

    Per-sample weights weight the compiled loss as ``keras.Model.fit(x, y,
    sample_weight=w)`` does: ``sum(w_i * loss_i) / batch_size`` per batch.

    Args:
        data: ``(x, y)`` or ``(x, y, sample_weight)`` numpy arrays (``sample_weight``: shape
            (N,), finite, >= 0), augmented ``SeededBatches`` of such arrays (their batch
            size and augmentation are kept; each phase draws its own order), or a
            ``tf.data.Dataset`` of ``(x, y)`` or ``(x, y, sample_weight)`` batches.
        model: the model the data must fit (input shape, number of classes).
        batch_size: batch size for numpy arrays.
        what: name used in error messages ("train_data", "validation_data").
    """

    def __init__(self, data, model, batch_size, what="train_data"):
        """``digest``: a cheap fingerprint of the data (checkpoints refuse other data)."""
        self.what = what
        self.batch_size = int(batch_size)
        self.dataset = None
        self.w = None  # per-sample weights of numpy data
        self.weighted = False
        self._repeated = None
        self.augment = None  # (shift, flip) of augmented SeededBatches
        self.teacher_logits = None  # a distilling run's teacher logits of x (cache_teacher)
        self.data_seed = None  # their seed: mixed into every phase's
        self.devices, self._split = backend.batch_splits()
        if isinstance(data, SeededBatches):
            self.batch_size, self.augment, self.data_seed = data.batch_size, data.augment, data.seed
            data = (data.x, data.y) if data.w is None else (data.x, data.y, data.w)
        if _is_tf_dataset(data):
            if batch_part() is not None:
                raise ValueError(
                    f"`{what}`: under several JAX processes give numpy arrays (x, y): each "
                    "process then feeds its share of every batch. A tf.data.Dataset is not "
                    f"supported there yet. Received a {type(data).__name__}."
                )
            self.dataset = data
            first = next(iter(data.take(1)), None)
            if first is None:
                raise ValueError(f"`{what}` is an empty dataset: it yielded no batch.")
            if not _is_pair_or_triple(first):
                raise ValueError(
                    f"`{what}` must yield (x, y) or (x, y, sample_weight) batches. Received "
                    f"elements of structure {data.element_spec}"
                )
            x, y = np.asarray(first[0]), np.asarray(first[1])
            w = None
            if x.ndim == len(model.inputs[0].shape) - 1:
                raise ValueError(
                    f"`{what}` yields single samples of shape {x.shape}, not batches: call "
                    f".batch(batch_size) on the dataset. Model {model.name!r} expects batches "
                    f"of shape {tuple(model.inputs[0].shape)}."
                )
            if len(x) != len(y):
                raise ValueError(
                    f"`{what}`: a batch's x and y have different lengths ({len(x)} and "
                    f"{len(y)})."
                )
            self._check(x, y, model)
            if len(first) == 3:
                w = _check_weights(first[2], len(x), what, "the batch (first batch checked)")
                self.weighted = True
            static = data.element_spec[0].shape[0]
            if self._split == "shards" and (static is None or static % self.devices):
                raise ValueError(
                    f"`{what}`: keras.distribution shards every batch over {self.devices} "
                    "devices, so the dataset needs a fixed batch size divisible by "
                    f"{self.devices} (batch with drop_remainder=True). Received batches of "
                    f"size {static if static is not None else 'None (unknown)'}."
                )
            card = int(data.cardinality())
            self.steps = card if card > 0 else sum(1 for _ in data)
            self.digest = f"dataset:{self.steps}:{data_digest(x, y, w)}"  # first batch
        elif _is_pair_or_triple(data):
            x, y = np.asarray(data[0]), np.asarray(data[1])
            if len(x) != len(y):
                raise ValueError(
                    f"`{what}`: x and y have different lengths ({len(x)} and {len(y)})."
                )
            self._check(x, y, model)
            if len(data) == 3:
                self.w = _check_weights(data[2], len(x), what, f"x ({len(x)} samples)")
                self.weighted = True
            self.x, self.y = x.astype("float32", copy=False), y
            self.steps = math.ceil(len(x) / self.batch_size)
            self.digest = data_digest(x, y, self.w)
            if self.augment is not None:
                self.digest += f":augment{self.augment}:seed{self.data_seed}"
            self._check_split(len(x))
        else:
            length = f" of length {len(data)}" if isinstance(data, tuple | list) else ""
            raise TypeError(
                f"`{what}` must be a tuple (x, y) or (x, y, sample_weight) of numpy arrays, "
                "augmented batches (bitat_keras.datasets.augmented_batches), or a "
                "tf.data.Dataset of (x, y) or (x, y, sample_weight) batches. Received: "
                f"{type(data).__name__}{length}"
            )

    def _check(self, x, y, model):
        if len(x) == 0:
            raise ValueError(f"`{self.what}` is empty: it holds no sample.")
        expected = tuple(model.inputs[0].shape[1:])
        got = tuple(x.shape[1:])
        if len(got) != len(expected) or any(
            e is not None and e != g for e, g in zip(expected, got, strict=False)
        ):
            raise ValueError(
                f"`{self.what}` samples have shape {got} but model {model.name!r} expects "
                f"{expected}."
            )
        if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
            bad = "non-numeric" if not np.issubdtype(x.dtype, np.number) else "NaN or infinite"
            raise ValueError(
                f"`{self.what}` inputs contain {bad} values (dtype {x.dtype}); clean or "
                "impute them before training: BiTAT's statistics and the loss need finite "
                "numbers."
            )
        classes = model.outputs[0].shape[-1]
        y = np.asarray(y)
        if y.ndim > 1 and y.shape[-1] == 1:
            y = y[..., 0]
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.number):
            hint = ""
            if y.ndim == 2 and y.shape[-1] == classes:
                hint = " These look one-hot: pass np.argmax(y, axis=-1)."
            raise ValueError(
                f"`{self.what}` labels must be integer class ids of shape (N,). "
                f"Received labels of shape {y.shape} and dtype {y.dtype}.{hint}"
            )
        if np.any(y != np.round(y)) or y.min() < 0 or (classes and y.max() >= classes):
            raise ValueError(
                f"`{self.what}` labels must be integers in [0, {classes}) for model "
                f"{model.name!r}. Received values in [{y.min()}, {y.max()}]."
            )

    def _check_split(self, n):
        """Under a distribution every batch must reach every device: JAX's sharding needs
        sizes divisible by the device count; a tf.distribute replica left with an empty
        batch fails (TensorFlow's VALID conv mis-shapes empty batches)."""
        if self.devices == 1:
            return
        sizes = {min(self.batch_size, n), n % self.batch_size or self.batch_size}
        if self._split == "shards":
            bad = sorted(b for b in sizes if b % self.devices)
            rule = f"divisible by {self.devices} (keras.distribution shards each batch)"
        else:
            bad = sorted(b for b in sizes if b < self.devices)
            rule = f"at least {self.devices} (one sample per tf.distribute replica)"
        if bad:
            raise ValueError(
                f"`{self.what}`: {n} samples in batches of {self.batch_size} give batches of "
                f"size {bad}, but every batch size must be {rule}. Choose batch_size and the "
                "number of samples accordingly (e.g. drop the last few samples)."
            )

    def fit_kwargs(self, seed):
        """Arguments for ``fit``: the arrays (and ``sample_weight``) as ``SeededBatches``
        whose order ``seed`` draws, or the dataset as one iterator over its repeated passes,
        a pass per Keras epoch (``steps_per_epoch``). A new iterator per epoch, as Keras
        makes for a finite dataset, stalled the first step of many epochs by 4-5 s under
        TensorFlow (the CPU benchmark's augmented pipeline)."""
        if self.dataset is not None:
            return {"x": self._passes(), "steps_per_epoch": self.steps, "shuffle": False}
        return {"x": self._seeded(seed), "shuffle": False}

    def eval_kwargs(self):
        """Arguments for ``evaluate``: one pass over the data, in order."""
        return {"x": self.dataset if self.dataset is not None else self._seeded(0)}

    def _passes(self):
        """The dataset repeated: one object for every phase (a new one would retrace)."""
        if self._repeated is None:
            self._repeated = self.dataset.repeat()
        return self._repeated

    def _seeded(self, seed, steps=None):
        """The arrays as ``SeededBatches`` drawn from ``seed`` (and the data's own seed)."""
        if self.data_seed is not None:
            seed = int(np.random.SeedSequence([self.data_seed, seed]).generate_state(1)[0])
        return SeededBatches(
            self.x,
            self.y,
            self.batch_size,
            seed,
            steps,
            self.w,
            augment=self.augment,
            teacher_logits=self.teacher_logits,
        )

    def cache_teacher(self, teacher):
        """Compute the frozen ``teacher``'s logits of every training image once, to travel
        with the labels of every training batch (``SeededBatches``), so that a distilling
        step reads them instead of running the teacher. Only numpy arrays without
        augmentation (an augmented or tf.data image is new at every step) whose logits fit
        in ``distill.CACHE_BYTES``; otherwise the steps run the teacher.

        Returns:
            Whether the logits were cached.
        """
        if self.teacher_pass_due:
            self.teacher_logits = teacher_outputs(teacher, self.x, self.batch_size)
        return self.teacher_logits is not None

    @property
    def teacher_pass_due(self):
        """Whether ``cache_teacher`` would compute the teacher's logits now: not yet
        computed, and every epoch shows the same images (numpy arrays, no augmentation)."""
        return self.teacher_logits is None and self.dataset is None and self.augment is None

    def phase_kwargs(self, epochs, seed):
        """``fit`` arguments for ``epochs`` (a whole or fractional number) of training with
        a data order drawn from ``seed``, and the number of optimizer steps they make."""
        steps = max(int(round(epochs * self.steps)), 1)
        whole = float(epochs).is_integer()
        if self.dataset is not None:  # a pass per epoch, or the steps in one epoch
            per_epoch, epochs = (self.steps, int(epochs)) if whole else (steps, 1)
            kwargs = {"x": self._passes(), "steps_per_epoch": per_epoch, "epochs": epochs}
            return {**kwargs, "shuffle": False}, steps
        # shuffle=False: the order is SeededBatches' own (Keras would shuffle the batches
        # with Python's global random state, which a resumed run does not share).
        if whole:
            return {"x": self._seeded(seed), "epochs": int(epochs), "shuffle": False}, steps
        return {"x": self._seeded(seed, steps), "epochs": 1, "shuffle": False}, steps

    # The samples below decide what the run does between phases (statistics, groups, s and
    # V, thresholds, BatchNorm statistics): in several processes each is the chief's.

    def sample(self, n, seed):
        """``(x, y)``: up to ``n`` samples (seeded for arrays, the first batch of a dataset)."""
        if self.dataset is None:
            idx = np.sort(np.random.default_rng(seed).permutation(len(self.x))[:n])
            return broadcast(self.x[idx]), broadcast(np.asarray(self.y)[idx])
        x, y = next(iter(self.dataset))[:2]
        return broadcast(np.asarray(x, dtype="float32")[:n]), broadcast(np.asarray(y)[:n])

    def images(self, n, seed):
        """Up to ``n`` input images (seeded sample for arrays, first batches for datasets)."""
        return broadcast(sample_images(self.x if self.dataset is None else self.dataset, n, seed))

    def batches(self, n, seed, merge=1):
        """Up to ``n`` batches of inputs, for re-estimating BatchNorm statistics, yielded
        ``merge`` batches at a time (fewer, larger forward passes: eager calls cost mostly
        per-op dispatch)."""
        return map(broadcast, self._batches(n, seed, merge))

    def _batches(self, n, seed, merge):
        merge = max(int(merge), 1)
        if self.dataset is None:
            order = np.random.default_rng(seed).permutation(len(self.x))
            count = min(n, self.steps) * self.batch_size
            for i in range(0, min(count, len(self.x)), merge * self.batch_size):
                rows = order[i : min(i + merge * self.batch_size, count)]
                yield self.x[np.sort(rows)]
            return
        chunk = []
        for i, element in enumerate(self.dataset):
            if i >= n:
                break
            chunk.append(np.asarray(element[0], dtype="float32"))
            if len(chunk) == merge:
                yield np.concatenate(chunk)
                chunk = []
        if chunk:
            yield np.concatenate(chunk)

    def merge_for(self, samples=512):
        """How many batches make about ``samples`` inputs of a 32x32 image (fewer for
        larger images, at least one batch)."""
        pixels = int(np.prod(self.x.shape[1:3] if self.dataset is None else (32, 32)))
        per_pass = samples * 1024 // max(pixels, 1)
        return max(1, min(samples, per_pass) // self.batch_size)
