"""The shared training loop of learned methods: seeding, resume, model files, instance optimisation.

A small learned method defined here (a CNN predicting one global translation) exercises the loop;
the real methods have their own tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytest
import torch
from torch import nn

from registration_core.core.io import Image, save_image
from registration_core.core.spatial import warp
from registration_core.errors import InputError
from registration_core.methods.training import (
    LearnedMethod,
    common_params,
    param_schema,
    random_pairs,
    read_model_file,
    train_method,
)

SHAPE = (24, 20)


class _ShiftNet(nn.Module):
    """Linear regression of the translation (voxels) from both images' pixels."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.head = nn.Linear(2 * int(np.prod(shape)), 2)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([fixed, moving], dim=1).flatten(1))  # (B, 2)


class GlobalShift(LearnedMethod):
    """One translation per pair, predicted by a tiny CNN; MSE training loss."""

    name = "global_shift"
    params = param_schema(*common_params(steps=40, lr=0.002, io_lr=0.002, batch_size=4))

    def build_model(self, shape: tuple[int, ...], params: Mapping[str, Any]) -> nn.Module:
        return _ShiftNet(shape)

    def predict(self, model: nn.Module, fixed: torch.Tensor, moving: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
        shift = model(fixed, moving)
        return shift[:, :, None, None].expand(-1, -1, *fixed.shape[2:])

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], params: Mapping[str, Any]):
        warped = warp(batch["moving"], self.predict(model, batch["fixed"], batch["moving"], params))
        mse = ((warped - batch["fixed"]) ** 2).mean()
        return mse, {"mse": mse}


METHOD = GlobalShift()


def _blob(center: tuple[float, float]) -> np.ndarray:
    i, j = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    return np.exp(-((i - center[0]) ** 2 + (j - center[1]) ** 2) / 18.0).astype(np.float32)


def _write(tmp_path: Path, centers: list[tuple[float, float]], prefix: str) -> list[Path]:
    paths = []
    for n, center in enumerate(centers):
        path = tmp_path / f"{prefix}{n}.nii.gz"
        save_image(Image(_blob(center), np.diag([1.5, 1.5, 1.0, 1.0])), path)
        paths.append(path)
    return paths


@pytest.fixture
def train_images(tmp_path: Path) -> list[Path]:
    centers = [(12 + di, 10 + dj) for di, dj in [(0, 0), (2, -1), (-2, 1), (1, 2), (-1, -2), (3, 0)]]
    return _write(tmp_path, centers, "train")


def _state(path: Path) -> dict[str, torch.Tensor]:
    return read_model_file(path, "global_shift")["state_dict"]


def test_random_pairs_are_distinct_and_seeded() -> None:
    pairs = random_pairs(5, 200, np.random.default_rng(3))
    assert pairs.shape == (200, 2) and np.all(pairs[:, 0] != pairs[:, 1])
    assert set(pairs.ravel()) == set(range(5))
    assert np.array_equal(pairs, random_pairs(5, 200, np.random.default_rng(3)))
    with pytest.raises(InputError, match="at least 2 images"):
        random_pairs(1, 3, np.random.default_rng(0))


def test_training_lowers_the_loss_and_registers_a_held_out_pair(tmp_path: Path, train_images: list[Path]) -> None:
    log = train_method(METHOD, train_images, tmp_path / "model", {"steps": 40, "val_every": 10})
    losses = [record["total"] for record in log["history"]]
    assert len(losses) == 40 and np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert [v["step"] for v in log["validation"]] == [0, 10, 20, 30, 40]
    assert log["validation"][-1]["total"] < log["validation"][0]["total"]
    on_disk = json.loads((tmp_path / "model" / "log.json").read_text())
    assert on_disk["n_train"] == 6 and on_disk["steps"] == 40
    # a pair not seen in training: the blob moved by (+2, +2) voxels
    fixed, moving = (Image(_blob(c), np.diag([1.5, 1.5, 1.0, 1.0])) for c in [(11, 9), (13, 11)])
    params = METHOD.resolve_params({"checkpoint": str(tmp_path / "model" / "model.pt")})
    result = METHOD.register(fixed, moving, params)
    assert result.disp_vox.shape == (2, *SHAPE)
    shift = result.disp_vox[:, 12, 10]
    assert np.all(np.abs(shift - 2.0) < 1.0), shift  # identity is off by 2 voxels per axis


def test_resumed_training_equals_an_uninterrupted_run(tmp_path: Path, train_images: list[Path]) -> None:
    settings = {"steps": 12, "checkpoint_every": 4}
    train_method(METHOD, train_images, tmp_path / "whole", settings)
    train_method(METHOD, train_images, tmp_path / "parts", {**settings, "steps": 8})
    resumed = train_method(METHOD, train_images, tmp_path / "parts", settings)
    whole, parts = _state(tmp_path / "whole" / "model.pt"), _state(tmp_path / "parts" / "model.pt")
    assert all(torch.equal(whole[key], parts[key]) for key in whole)
    assert [r["step"] for r in resumed["history"]] == list(range(12))


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path: Path, train_images: list[Path]) -> None:
    train_method(METHOD, train_images, tmp_path / "run", {"steps": 4, "checkpoint_every": 2})
    with pytest.raises(InputError, match="checkpoint.pt: written by a run with another params"):
        train_method(METHOD, train_images, tmp_path / "run", {"steps": 6, "lr": 0.01})


def test_instance_optimisation_refines_the_pair(tmp_path: Path, train_images: list[Path]) -> None:
    train_method(METHOD, train_images, tmp_path / "model", {"steps": 2})
    fixed, moving = (Image(_blob(c), np.diag([1.5, 1.5, 1.0, 1.0])) for c in [(11, 9), (13, 11)])
    checkpoint = str(tmp_path / "model" / "model.pt")
    plain = METHOD.register(fixed, moving, METHOD.resolve_params({"checkpoint": checkpoint}))
    refined = METHOD.register(fixed, moving, METHOD.resolve_params({"checkpoint": checkpoint, "io_steps": 60}))
    assert len(refined.loss_history) == 60
    assert refined.loss_history[-1]["total"] < refined.loss_history[0]["total"]
    assert np.abs(refined.disp_vox[:, 12, 10] - 2.0).max() < np.abs(plain.disp_vox[:, 12, 10] - 2.0).max()
    assert read_model_file(Path(checkpoint), "global_shift")["steps"] == 2  # the checkpoint is unchanged


def test_bad_inputs_name_the_file(tmp_path: Path, train_images: list[Path]) -> None:
    other = tmp_path / "other.nii.gz"
    save_image(Image(_blob((5, 5))[:10, :10], np.eye(4)), other)
    with pytest.raises(InputError, match="other.nii.gz: grid"):
        train_method(METHOD, [*train_images, other], tmp_path / "x", {"steps": 1})
    with pytest.raises(InputError, match="2 images but 1 label maps"):
        train_method(METHOD, train_images[:2], tmp_path / "x", {"steps": 1}, labels=train_images[:1])
    with pytest.raises(InputError, match="needs a trained network"):
        METHOD.register(Image(_blob((9, 9)), np.eye(4)), Image(_blob((9, 9)), np.eye(4)), METHOD.resolve_params({}))
    train_method(METHOD, train_images, tmp_path / "model", {"steps": 1})
    small = Image(_blob((5, 5))[:10, :10], np.eye(4))
    params = METHOD.resolve_params({"checkpoint": str(tmp_path / "model" / "model.pt")})
    with pytest.raises(InputError, match=r"trained on images of shape \(24, 20\)"):
        METHOD.register(small, small, params)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(InputError, match="junk.pt: not a readable model file"):
        read_model_file(tmp_path / "junk.pt", "global_shift")
    with pytest.raises(InputError, match="trained for method 'global_shift', not 'voxelmorph'"):
        read_model_file(tmp_path / "model" / "model.pt", "voxelmorph")
    assert not (tmp_path / "x" / "model.pt").exists()


def test_classical_methods_cannot_be_trained(tmp_path: Path, train_images: list[Path]) -> None:
    with pytest.raises(InputError, match="method 'demons' is not trained"):
        train_method("demons", train_images, tmp_path / "x", {})
