"""Fixtures shared by the Python tests: where ../shared/models is, and skips without it."""
import os
import pathlib

import pytest


@pytest.fixture
def shared_models() -> pathlib.Path:
    """../shared/models of the repository (SHARDWIRE_SHARED_DIR), or skip when absent."""
    root = pathlib.Path(os.environ.get("SHARDWIRE_SHARED_DIR", "../shared")) / "models"
    if not (root / "tiny-llama3-bf16" / "model.safetensors").exists():
        pytest.skip(f"real checkpoints not found under {root}")
    return root
