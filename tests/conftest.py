import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global seed (deterministic tests)."""
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


@pytest.fixture
def eager():
    """TensorFlow runs the train steps eagerly: a mini benchmark preset's row makes a dozen
    steps, fewer than tracing its train step costs (about 4 s against 0.2 s per eager
    step), and the graph path of every method is the library tests' business (and that of
    the benchmark CLI run in a subprocess)."""
    if keras.backend.backend() != "tensorflow":
        yield
        return
    import tensorflow as tf

    before = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(before)
