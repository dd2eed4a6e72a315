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
