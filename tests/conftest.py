import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Each pytest-xdist worker gets its share of the cores for TensorFlow's per-op parallelism:
# by default every worker starts one compute thread per core, and two workers on two cores
# then oversubscribe the CPU.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global seed (deterministic tests)."""
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()
