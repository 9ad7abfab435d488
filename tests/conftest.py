import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LAB_SMALL", "1")
os.environ.setdefault("LAB_PROGRESS", "0")  # no progress bars in test logs (tests/test_progress.py turns them on)


@pytest.fixture(scope="session")
def tokenizer():
    from lab.world.train import tokenizer as make
    return make()


@pytest.fixture(scope="session")
def shapes_pipe():
    import lab
    return lab.load("shapes")
