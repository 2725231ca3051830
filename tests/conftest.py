"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from support.paths import REPO_ROOT, SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the real data folder ``../shared/data``; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """One torch intra-op thread for a test module: seeded results then do not depend on the
    machine's cores (float reductions differ between thread counts), and a shared 2-core machine
    is not slowed down by OpenMP's waiting (2 threads were up to 40x slower there)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def oasis_2d_slice(shared_data: Path) -> Callable[[str], tuple]:
    """``subject -> (image, labels)``: an oasis-trt subject prepared by the preprocessing of
    config/studies/oasis-trt-2d.yaml (axial middle slice at 2 mm, 80x128)."""
    from registration_core.core.io import load_image
    from registration_core.preprocessing.steps import run_steps

    config = yaml.safe_load((REPO_ROOT / "config" / "studies" / "oasis-trt-2d.yaml").read_text())
    steps = config["datasets"]["oasis-trt"]["preprocess"]

    def prepare(subject: str) -> tuple:
        folder = shared_data / "oasis-trt" / subject
        return run_steps(load_image(folder / "t1w_brain.nii.gz"), load_image(folder / "labels.nii.gz", "labels"), steps)

    return prepare
