"""transfusion: one transformer that predicts the next token for text and diffuses images.

    import transfusion
    pipe = transfusion.Pipeline.from_pretrained("runs/tiny")
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("transfusion-mm")
except PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0.0.0+unknown"


def __getattr__(name: str):
    """``transfusion.Pipeline`` without importing torch at ``import transfusion``."""
    if name == "Pipeline":
        from transfusion.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'transfusion' has no attribute {name!r}")
