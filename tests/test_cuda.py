"""CUDA against CPU: NODEO's Dice on a real 2D slice pair agrees within 0.005 (skipped without CUDA).

Run on a GPU machine with ``pytest -m cuda`` (benchmarks/gpu_check.sh does, with timings).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from registration_core.core.io import Image
from registration_core.core.spatial import warp_array
from registration_core.evaluation.metrics import dice_summary
from registration_core.methods import get_method

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]
NODEO = get_method("nodeo")
DICE_TOLERANCE = 0.005


def _slice(path: Path, index: int, dtype: type) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)[:, :, index].astype(dtype)


def test_nodeo_runs_on_cuda_and_reports_it() -> None:
    rng = np.random.default_rng(0)
    img = Image(rng.random((64, 64)).astype(np.float32), np.eye(4))
    result = NODEO.register(img, img, NODEO.resolve_params({"iterations": 3, "device": "cuda"}))
    assert result.device.startswith("cuda")
    assert np.isfinite(result.disp_vox).all()


@pytest.mark.realdata
@pytest.mark.parametrize("preset", ["default", "reference"])
def test_nodeo_cuda_dice_matches_cpu(shared_data: Path, preset: str) -> None:
    root = shared_data / "aligned-brains"
    labels = [int(v) for v in (root / "eval-labels.txt").read_text().split()]
    fixed = Image(_slice(root / "subject-a/t1w.nii.gz", 112, np.float32), np.eye(4))
    moving = Image(_slice(root / "subject-b/t1w.nii.gz", 112, np.float32), np.eye(4))
    fixed_lab = _slice(root / "subject-a/aseg.nii.gz", 112, np.int32)
    moving_lab = _slice(root / "subject-b/aseg.nii.gz", 112, np.int32)
    dice = {}
    for device in ("cpu", "cuda"):
        result = NODEO.register(fixed, moving, NODEO.resolve_params({"preset": preset, "device": device}))
        dice[device] = dice_summary(fixed_lab, warp_array(moving_lab, result.disp_vox, "nearest"), labels)["mean"]
    print(f"nodeo {preset} 2D Dice: cpu {dice['cpu']:.4f} cuda {dice['cuda']:.4f}")
    assert abs(dice["cpu"] - dice["cuda"]) <= DICE_TOLERANCE, dice
