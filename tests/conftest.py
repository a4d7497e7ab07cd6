import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Models trained on first use (the digit judge) go to a folder of this test session."""
    os.environ["TRANSFUSION_CACHE"] = str(tmp_path_factory.mktemp("cache"))
