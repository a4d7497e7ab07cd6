import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~10 s on 2 CPU cores (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU; skipped without one (benchmarks/gpu_check.sh runs them)")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Models trained on first use (the digit judge) go to a folder of this test session."""
    os.environ["TRANSFUSION_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def debug_run(tmp_path_factory):
    """One briefly trained `debug` run folder, shared by every test that only reads it."""
    from transfusion.cli import COMMANDS

    out = tmp_path_factory.mktemp("shared") / "debug"
    COMMANDS["train"](["--preset", "debug", "--out", str(out), "train.steps=2", "train.eval_samples=2",
                       "diffusion.sample_steps=2"])
    return out
