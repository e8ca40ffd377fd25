"""Shared pytest fixtures."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_dir():
    """The ``shared`` folder beside the repo (fixtures, official vocab).

    Required in CI (``CI=true``): a missing folder fails there; elsewhere the
    tests that need it are skipped with the reason.
    """
    path = Path(os.environ.get("ERNIEVIL2_SHARED", REPO.parent / "shared"))
    if not (path / "fixtures").is_dir():
        message = f"shared fixtures folder not found at {path} (set ERNIEVIL2_SHARED)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def tokenizer():
    """The official vocabulary at text length 16: what the data-stream tests tokenize with."""
    from ernievil2.data.tokenizer import ErnieTokenizer
    from ernievil2.resource_files import resolve_resource

    return ErnieTokenizer(resolve_resource("ernie-3.0-base-zh/vocab.txt"), max_len=16)
