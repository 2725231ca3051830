"""RegNet: the network's geometry (halo, tiles, 2D/3D shapes), synthetic pairs in our convention,
the 2019 loss (Huber, bending energy), class-balanced crops, the stage cascade, training on textured
images, recovery of held-out synthetic deformations, the CLI round trip, instance optimisation and
real brain slices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from registration_core.core.io import Image, load_displacement, load_image, save_image
from registration_core.core.losses import bending_energy
from registration_core.core.spatial import warp
from registration_core.data import synth
from registration_core.errors import InputError
from registration_core.methods import get_method
from registration_core.methods.regnet import RegNetCascade, RegNetCNN, displacement_loss, halo, predict_cascade, predict_dense
from registration_core.methods.regnet_sampling import (
    balanced_corners,
    bspline_kernel,
    class_bins_mm,
    displacement_classes,
    shrink,
    shrunk_shape,
    synthetic_displacement,
    synthetic_pair,
    upsample_displacement,
)
from registration_core.methods.training import TrainingSet, train_method

pytestmark = pytest.mark.usefixtures("torch_one_thread")

REGNET = get_method("regnet")
SHAPE = (48, 48)
SMALL = {"patch_size": "9", "width": "16", "output_patch": "16", "max_disp_mm": "3", "grid_spacing_mm": "16"}



def texture(seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """A smooth random texture in [0, 1] (cubic spline of U(-1, 1) values every 4 voxels)."""
    control = tuple(n // 4 for n in shape)
    field = synth.random_bspline_field(shape, control, np.random.default_rng(seed), channels=1, zero_border=False)[0]
    return ((field - field.min()) / (field.max() - field.min())).astype(np.float32)


def mean_error_mm(disp_vox: np.ndarray, truth_vox: np.ndarray, spacing_mm: tuple[float, ...]) -> float:
    """Mean end-point error (mm) of two displacements (ndim, *spatial) in voxels."""
    spacing = np.asarray(spacing_mm).reshape(-1, *([1] * (disp_vox.ndim - 1)))
    return float(np.sqrt((((disp_vox - truth_vox) * spacing) ** 2).sum(axis=0)).mean())


# -- network geometry ---------------------------------------------------------------------------


def test_halo_matches_the_published_patch() -> None:
    assert halo(29) == 28 and halo(9) == 8 and halo(3) == 2
    model = RegNetCNN(2, 29, 4).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 2, 60, 62)).shape == (1, 2, 4, 6)
    with pytest.raises(ValueError, match="even"):
        model(torch.zeros(1, 2, 61, 62))


@pytest.mark.parametrize("shape", [(21, 26), (10, 13, 9)], ids=["2d", "3d"])
def test_dense_prediction_has_the_image_shape_and_tiles_agree(shape: tuple[int, ...]) -> None:
    """Odd and even axes; tiles of 4 voxels give the one-pass result; the untrained network ~ identity."""
    torch.manual_seed(0)
    model = RegNetCNN(len(shape), 5, 4).eval()
    fixed, moving = torch.rand(1, 1, *shape), torch.rand(1, 1, *shape)
    with torch.no_grad():
        untrained = predict_dense(model, fixed, moving, tile=128)
        assert untrained.shape == (1, len(shape), *shape)
        assert float(untrained.abs().max()) < 1e-3
        torch.nn.init.normal_(model.head[-1].weight, std=0.5)
        whole = predict_dense(model, fixed, moving, tile=128)
        tiled = predict_dense(model, fixed, moving, tile=4)
    assert float(whole.abs().mean()) > 0.01
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)


# -- synthetic pairs ----------------------------------------------------------------------------


def test_synthetic_pair_is_in_our_convention() -> None:
    """A linear image makes linear interpolation exact: fixed = I(x + u), moving(x + t) = fixed(x)."""
    i, j = np.meshgrid(np.arange(20.0), np.arange(24.0), indexing="ij")
    image = torch.from_numpy((0.5 * i - 0.25 * j + 3.0).astype(np.float32))[None, None]
    u = torch.zeros(1, 2, 20, 24)
    u[:, 0], u[:, 1] = 1.5, -2.0
    shift = torch.tensor([0.25, -0.4])
    fixed, moving, target = synthetic_pair(image, u, shift)
    torch.testing.assert_close(target[0, :, 0, 0], torch.tensor([1.25, -1.6]))
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))  # away from the clamped border
    torch.testing.assert_close(fixed[inner], image[inner] + 0.5 * 1.5 - 0.25 * -2.0)
    torch.testing.assert_close(warp(moving, target)[inner], fixed[inner], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("category", ["single", "mixed"])
def test_synthetic_displacement_reaches_the_requested_maximum(category: str) -> None:
    image = Image(texture(1, (40, 44)), np.diag([1.5, 1.0, 1.0, 1.0]))
    disp = synthetic_displacement(category, image, np.random.default_rng(0), 3.5, 16.0)
    assert disp.shape == (2, 40, 44) and disp.dtype == np.float32
    assert synth.magnitude_mm(disp, image.spacing).max() == pytest.approx(3.5, rel=1e-4)


def test_respiratory_training_fields_follow_the_mask() -> None:
    """3D: the synthetic respiratory motion shifts the lung base by the drawn maximum (cranio-caudal)."""
    image = Image(np.random.default_rng(0).random((12, 12, 16)).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    mask = np.zeros(image.shape, bool)
    mask[3:9, 3:9, 4:12] = True
    disp = synthetic_displacement("respiratory", image, np.random.default_rng(1), 6.0, 40.0, mask)
    assert disp.shape == (3, 12, 12, 16)
    shift_mm = 2.0 * disp[2, 6, 6, 4]  # k = 4 is the lowest (inferior) lung slice: the full shift
    assert 6.0 * 0.8 - 3.0 <= shift_mm <= 6.0 * 1.1 + 3.0  # plus the local field of at most 3 mm


def test_sample_batch_shapes_targets_and_seed() -> None:
    images = torch.from_numpy(np.stack([texture(s, (41, 38)) for s in range(3)]))[:, None]
    data = TrainingSet(images, None, Image(images[0, 0].numpy(), np.eye(4)), ())
    params = REGNET.resolve_params({**SMALL, "output_patch": "8", "patches_per_pair": "3", "batch_size": "2"})
    batch = REGNET.sample_batch(data, np.random.default_rng(5), params, torch.device("cpu"))
    assert set(batch) == {"fixed0", "moving0", "disp0", "spacing_mm0"}  # one stage: index 0
    assert batch["fixed0"].shape == (6, 1, 24, 24) and batch["moving0"].shape == (6, 1, 24, 24)
    assert batch["disp0"].shape == (6, 2, 8, 8)
    torch.testing.assert_close(batch["spacing_mm0"], torch.ones(2))
    # |t| = |u - s| <= max_disp_mm + |s| with |s| <= sqrt(2) / 2 voxel
    assert float(batch["disp0"].norm(dim=1).max()) <= 3.0 + 0.5 * 2**0.5 + 1e-4
    again = REGNET.sample_batch(data, np.random.default_rng(5), params, torch.device("cpu"))
    for key in batch:
        torch.testing.assert_close(batch[key], again[key])


def test_crops_and_targets_line_up_in_a_field_window() -> None:
    """A linear image I = 0.5 i - 0.25 j: fixed - moving = 0.5 t_i - 0.25 t_j on each crop's outputs.

    fixed = I(x + u), moving = I(x + s), t = u - s; exact wherever x + u and x + s stay inside the
    image (the replicated border is not linear), i.e. on nearly all output voxels.
    """
    i, j = np.meshgrid(np.arange(64.0), np.arange(60.0), indexing="ij")
    ramp = torch.from_numpy((0.5 * i - 0.25 * j).astype(np.float32))[None, None]
    data = TrainingSet(ramp, None, Image(ramp[0, 0].numpy(), np.eye(4)), ())
    raw = {**SMALL, "output_patch": "12", "field_window": "20", "noise_std": "0", "patches_per_pair": "3", "batch_size": "3"}
    params = REGNET.resolve_params(raw)
    batch = REGNET.sample_batch(data, np.random.default_rng(2), params, torch.device("cpu"))
    assert batch["fixed0"].shape == (9, 1, 28, 28) and batch["disp0"].shape == (9, 2, 12, 12)
    inner = (slice(None), 0, slice(8, -8), slice(8, -8))
    difference = batch["fixed0"][inner] - batch["moving0"][inner]
    expected = 0.5 * batch["disp0"][:, 0] - 0.25 * batch["disp0"][:, 1]
    assert float(batch["disp0"].abs().max()) > 0.5
    assert float(((difference - expected).abs() < 1e-4).float().mean()) > 0.9


def test_field_window_smaller_than_the_output_patch_is_refused() -> None:
    with pytest.raises(InputError, match="'field_window'=8 is smaller than 'output_patch'=16"):
        REGNET.resolve_params({"field_window": "8", "output_patch": "16"})


@pytest.mark.parametrize(
    ("raw", "shape", "message"),
    [
        ({"ncc_window": "8"}, (32, 32), "'ncc_window' must be odd"),
        ({"output_patch": "15"}, (32, 32), "'output_patch' must be even"),
        ({"output_patch": "40"}, (32, 32), "'output_patch'=40 exceeds the image shape"),
        ({"synth": "single+mixed+respiratory"}, (32, 32), "needs 3D images"),
    ],
)
def test_bad_parameters_name_the_parameter(raw: dict[str, str], shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(InputError, match=message):
        REGNET.build_model(shape, REGNET.resolve_params(raw))


def test_even_patch_is_refused_before_any_image_is_read() -> None:
    with pytest.raises(InputError, match="method 'regnet': parameter 'patch_size' must be odd, got 10"):
        REGNET.resolve_params({"patch_size": "10"})


def test_3d_forward_pass_of_the_published_size() -> None:
    """patch 29 (context 60): a tiny 3D volume predicts one vector per voxel through the padding."""
    params = REGNET.resolve_params({"width": "2", "tile": "8", "output_patch": "4"})
    model = REGNET.build_model((8, 9, 6), params).eval()
    with torch.no_grad():
        disp = REGNET.predict(model, torch.rand(1, 1, 8, 9, 6), torch.rand(1, 1, 8, 9, 6), params)
    assert disp.shape == (1, 3, 8, 9, 6) and torch.isfinite(disp).all()


# -- the 2019 loss -------------------------------------------------------------------------------


def test_huber_loss_equals_the_hand_computed_value() -> None:
    """Errors of 0.5, 3, -1 and 0 mm (spacing 2 x 1 mm): Huber (delta 1 mm) 0.125, 2.5, 0.5, 0."""
    prediction = torch.tensor([[[[0.25, 1.5]], [[-1.0, 0.0]]]])  # (1, 2, 1, 2) voxels
    total, terms = displacement_loss(prediction, torch.zeros_like(prediction), torch.tensor([2.0, 1.0]), "huber", 0.0)
    assert set(terms) == {"huber", "epe_mm"}
    assert float(total) == pytest.approx((0.125 + 2.5 + 0.5 + 0.0) / 4)
    assert float(terms["epe_mm"]) == pytest.approx((1.25**0.5 + 3.0) / 2)
    mse, mse_terms = displacement_loss(prediction, torch.zeros_like(prediction), torch.tensor([2.0, 1.0]), "mse", 0.0)
    assert set(mse_terms) == {"mse_mm2", "epe_mm"} and float(mse) == pytest.approx((1.25 + 9.0) / 2)


def quadratic_field(shape: tuple[int, ...]) -> torch.Tensor:
    """2D (6, 7): u_0 = 0.5 x0^2 + 3 x1 - 1, u_1 = 0.25 x0 x1 + x1^2 - 2 x0 (1, 2, 6, 7)."""
    x0, x1 = torch.meshgrid(*[torch.arange(float(n)) for n in shape], indexing="ij")
    return torch.stack([0.5 * x0**2 + 3 * x1 - 1, 0.25 * x0 * x1 + x1**2 - 2 * x0])[None]


def test_bending_energy_of_an_affine_field_is_zero_and_of_a_quadratic_one_analytic() -> None:
    grids = torch.meshgrid(*[torch.arange(float(n)) for n in (5, 6, 7)], indexing="ij")
    affine = torch.stack([0.3 * grids[0] - 2 * grids[2] + 1, grids[1], 0.7 * grids[0] + 0.1 * grids[1]])[None]
    assert float(bending_energy(affine)) == pytest.approx(0.0, abs=1e-10)
    # d00 u_0 = 1 on 4 x 7 voxels; d01 u_1 = 0.25 on 5 x 6 (counted twice); d11 u_1 = 2 on 6 x 5;
    # the mean runs over 2 components x 42 voxels (missing differences count as 0, RegNet's code)
    expected = (1.0 * 28 + 2 * 0.0625 * 30 + 4.0 * 30) / (2 * 42)
    assert float(bending_energy(quadratic_field((6, 7)))) == pytest.approx(expected)


def test_huber_plus_bending_weight_is_the_total() -> None:
    prediction = quadratic_field((6, 7)) * 0.1
    total, terms = displacement_loss(prediction, torch.zeros_like(prediction), torch.tensor([2.0, 1.0]), "huber", 0.1)
    assert set(terms) == {"huber", "bending", "epe_mm"}
    scaled = prediction * torch.tensor([2.0, 1.0]).view(1, 2, 1, 1)  # the energy of the field in mm
    torch.testing.assert_close(terms["bending"], bending_energy(scaled))
    torch.testing.assert_close(total, terms["huber"] + 0.1 * terms["bending"])


# -- class-balanced crops ------------------------------------------------------------------------


def test_published_displacement_classes() -> None:
    assert class_bins_mm(7.0) == (2.0, 7.0) and class_bins_mm(15.0) == (1.5, 4.0, 15.0)
    assert class_bins_mm(20.0) == (1.5, 8.0, 20.0) and class_bins_mm(4.0) == (4.0,)
    disp = np.array([[0.5, -1.6, 0.0, 9.0, 25.0], [1.0, 0.2, -4.0, 0.0, 0.0]])[:, None, :]  # (2, 1, 5) mm
    assert displacement_classes(disp, (1.5, 8.0, 20.0)).tolist() == [[0, 1, 1, 2, 2]]  # largest component; open top


def test_class_balanced_crops_give_equal_class_counts() -> None:
    """A 40 x 60 field of three bands (0.5, 3 and 10 mm): 3 x 200 crops centred on each class in turn,
    although the 10 mm band holds a sixth of the voxels."""
    disp = np.zeros((2, 40, 60))
    disp[0, :, :30], disp[0, :, 30:50], disp[1, :, 50:] = 0.5, 3.0, -10.0
    classes = displacement_classes(disp, class_bins_mm(15.0))
    size = (8, 8)
    corners = balanced_corners(classes, 3, size, [k % 3 for k in range(600)], np.random.default_rng(0))
    assert all(c % 2 == 0 and 0 <= c <= n - m for corner in corners for c, n, m in zip(corner, classes.shape, size))
    # the drawn voxel is one of the crop's central voxels (offsets 4 and 5 from an even corner), which
    # never straddle the bands' even edges: the class of the crop's centre is the class drawn
    drawn = [int(classes[c0 + 4, c1 + 4]) for c0, c1 in corners]
    assert drawn == [k % 3 for k in range(600)]
    assert np.bincount(drawn).tolist() == [200, 200, 200]
    assert (np.bincount(classes.ravel()) / classes.size).round(3).tolist() == [0.5, 0.333, 0.167]  # uniform crops


def test_an_empty_class_falls_back_to_the_next_present_one() -> None:
    classes = np.zeros((20, 20), dtype=np.int64)
    classes[:, 12:] = 2  # no voxel of class 1
    corners = balanced_corners(classes, 3, (6, 6), [1] * 50 + [0] * 50, np.random.default_rng(1))
    assert len(corners) == 100
    # the drawn voxel is one of the crop's central voxels (offset 3 or 4: the corner is even)
    assert all((classes[c0 + 3 : c0 + 5, c1 + 3 : c1 + 5] == 2).any() for c0, c1 in corners[:50])  # class 1 -> 2
    assert all((classes[c0 + 3 : c0 + 5, c1 + 3 : c1 + 5] == 0).any() for c0, c1 in corners[50:])


def test_class_balanced_batches_have_the_usual_shapes() -> None:
    images = torch.from_numpy(np.stack([texture(s, (40, 44)) for s in range(2)]))[:, None]
    data = TrainingSet(images, None, Image(images[0, 0].numpy(), np.eye(4)), ())
    params = REGNET.resolve_params({**SMALL, "max_disp_mm": "9", "balance": "classes", "patches_per_pair": "3"})
    batch = REGNET.sample_batch(data, np.random.default_rng(3), params, torch.device("cpu"))
    assert batch["fixed0"].shape == (12, 1, 32, 32) and batch["disp0"].shape == (12, 2, 16, 16)


# -- stages --------------------------------------------------------------------------------------


def test_stage_grids_shrink_and_upsample_consistently() -> None:
    """Coarse voxel k sits on voxel f k: a linear coarse field comes back as the same linear field."""
    assert shrunk_shape((48, 49, 9), 4) == (12, 13, 3)
    kernel = bspline_kernel(2, 2)
    assert kernel.shape == (7, 7) and float(kernel.sum()) == pytest.approx(1.0)
    image = torch.full((1, 1, 21, 26), 3.0)
    torch.testing.assert_close(shrink(image, 4), torch.full((1, 1, 6, 7), 3.0))
    k0, k1 = torch.meshgrid(torch.arange(6.0), torch.arange(7.0), indexing="ij")
    coarse = torch.stack([0.5 * k0 + 0.25 * k1, -k1])[None]  # coarse voxels
    fine = upsample_displacement(coarse, 4, (21, 26))
    x0, x1 = torch.meshgrid(torch.arange(21.0), torch.arange(26.0), indexing="ij")
    # u_fine(x) = 4 u_coarse(x / 4) on the span of the coarse grid (x0 <= 20, x1 <= 24), border beyond
    torch.testing.assert_close(fine[0, :, :, :25], torch.stack([0.5 * x0 + 0.25 * x1, -x1])[:, :, :25])
    torch.testing.assert_close(fine[0, :, :, 25], fine[0, :, :, 24])


class ConstantStage(nn.Module):
    """A stage network predicting a constant displacement (voxels of its grid) and recording its inputs."""

    halo = 2

    def __init__(self, value: tuple[float, float]) -> None:
        super().__init__()
        self.value = torch.tensor(value)
        self.seen: list[torch.Tensor] = []

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        self.seen.append(pair)
        shape = [n - 2 * self.halo for n in pair.shape[2:]]
        return self.value.view(1, 2, 1, 1).expand(pair.shape[0], 2, *shape).clone()


def test_the_cascade_warps_by_the_coarse_field_and_composes() -> None:
    """Stage 2 predicts 1 coarse voxel along axis 0 (2 full voxels), stage 1 then 0.5 along axis 1:
    the second stage reads the moving image warped by the first field; the fields compose to (2, 0.5)."""
    model = RegNetCascade(2, (2, 1), 5, 4)
    coarse, fine = ConstantStage((1.0, 0.0)), ConstantStage((0.0, 0.5))
    model.stages = nn.ModuleList([coarse, fine])
    fixed, moving = torch.rand(1, 1, 20, 22), torch.rand(1, 1, 20, 22)
    disp = predict_cascade(model, fixed, moving, tile=128)
    assert disp.shape == (1, 2, 20, 22)
    torch.testing.assert_close(disp[0, :, 0, 0], torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(disp, disp[:, :, :1, :1].expand_as(disp))
    warped = warp(moving, torch.tensor([2.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 20, 22))
    torch.testing.assert_close(fine.seen[0][:, 1:, 2:-2, 2:-2], warped)  # the padded input's image part
    assert coarse.seen[0].shape[2:] == (10 + 4, 11 + 5)  # shrunk grid (10, 11), halo 2, odd axis + 1


def test_a_two_stage_cascade_trains_and_registers(tmp_path: Path) -> None:
    images = [write_image(texture(seed), tmp_path / f"t{seed}.nii.gz") for seed in range(2)]
    raw = {**SMALL, "patch_size": "5", "width": "4", "stages": "2x1", "stage_max_disp_mm": "6x3", "loss": "huber",
           "bending_weight": "0.1", "balance": "classes", "steps": "3", "val_every": "2", "batch_size": "2",
           "device": "cpu"}
    log = train_method("regnet", images, tmp_path / "model", raw)
    assert set(log["history"][0]) == {"step", "elapsed_s", "total", *(f"{term}_s{f}" for term in ("huber", "bending", "epe_mm")
                                                                       for f in (2, 1))}
    saved = torch.load(tmp_path / "model" / "model.pt", weights_only=True)
    assert {key.split(".")[1] for key in saved["state_dict"]} == {"0", "1"}  # stages.0.*, stages.1.*
    fixed, moving, _ = held_out_pair(HELD_OUT_SEEDS[0], "single")
    result = REGNET.register(fixed, moving, REGNET.resolve_params({"checkpoint": str(tmp_path / "model" / "model.pt")}))
    assert result.disp_vox.shape == (2, *SHAPE) and np.isfinite(result.disp_vox).all()


def test_one_stage_is_the_single_network() -> None:
    """stages=1: the same initial weights as one RegNetCNN under the same seed, the same prediction."""
    params = REGNET.resolve_params({**SMALL, "width": "4"})
    torch.manual_seed(3)
    model = REGNET.build_model((30, 34), params).eval()
    torch.manual_seed(3)
    single = RegNetCNN(2, 9, 4).eval()
    assert list(model.state_dict()) == [f"stages.0.{key}" for key in single.state_dict()]
    for a, b in zip(model.stages[0].state_dict().values(), single.state_dict().values()):
        torch.testing.assert_close(a, b)
    torch.nn.init.normal_(single.head[-1].weight, std=0.5)
    model.stages[0].load_state_dict(single.state_dict())
    fixed, moving = torch.rand(1, 1, 30, 34), torch.rand(1, 1, 30, 34)
    with torch.no_grad():
        torch.testing.assert_close(REGNET.predict(model, fixed, moving, params), predict_dense(single, fixed, moving, 128))


def test_the_published_preset() -> None:
    params = REGNET.resolve_params({"preset": "published"})
    assert params["stages"] == (4, 2, 1) and params["stage_max_disp_mm"] == (20.0, 15.0, 7.0)
    assert (params["loss"], params["bending_weight"], params["balance"], params["activations"]) == (
        "huber", 0.1, "classes", "published")
    assert params["steps"] == REGNET.resolve_params({})["steps"]  # no published step count
    assert REGNET.resolve_params({})["stages"] == (1,) and REGNET.resolve_params({})["loss"] == "mse"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"stages": "4x2x1", "stage_max_disp_mm": "20x15"}, "'stage_max_disp_mm' has 2 values but 'stages' has 3"),
        ({"stages": "1x2"}, "'stages'=1x2 must decrease from coarse to fine"),
        ({"stages": "2x2"}, "'stages'=2x2 must decrease"),
        ({"stages": "0"}, "'stages' must be"),
        ({"loss": "l1"}, "'loss' must be one of mse, huber"),
        ({"balance": "bins"}, "'balance' must be one of none, classes"),
    ],
)
def test_bad_stage_and_loss_parameters_name_the_parameter(raw: dict[str, str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        REGNET.resolve_params(raw)


def test_a_stage_factor_that_leaves_too_small_a_grid_is_refused() -> None:
    params = REGNET.resolve_params({"stages": "4x1", "output_patch": "16"})
    with pytest.raises(InputError, match=r"'stages'=4x1: factor 4 shrinks the image of shape \(48, 40\) to \(12, 10\)"):
        REGNET.build_model((48, 40), params)
    with pytest.raises(InputError, match="'stages'"):
        REGNET.check_shape((48, 40), params)


# -- training on textures -------------------------------------------------------------------------

TRAIN_PARAMS = {**SMALL, "steps": "200", "val_every": "100", "lr": "1e-3", "device": "cpu"}
HELD_OUT_SEEDS = (101, 102, 103, 104)


def write_image(data: np.ndarray, path: Path, spacing_mm: float = 1.0) -> Path:
    save_image(Image(data, np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])), path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, torch_one_thread: None) -> dict[str, Path]:
    """200 steps (4 pairs x 2 crops each) on 4 textures, 48x48 voxels of 1 mm (one thread)."""
    root = tmp_path_factory.mktemp("regnet")
    images = [write_image(texture(seed), root / f"train{seed}.nii.gz") for seed in range(4)]
    train_method("regnet", images, root / "model", TRAIN_PARAMS)
    return {"model": root / "model" / "model.pt", "log": root / "model" / "log.json", "root": root}


def held_out_pair(seed: int, category: str) -> tuple[Image, Image, np.ndarray]:
    """A texture the network never saw, deformed by a field of an unseen seed: (fixed, moving, truth)."""
    image = Image(texture(50 + seed), np.eye(4))
    disp = synthetic_displacement(category, image, np.random.default_rng(seed), 3.0, 16.0)
    fixed, moving, truth = synthetic_pair(torch.from_numpy(image.data)[None, None], torch.from_numpy(disp)[None], torch.zeros(2))
    return image.with_data(fixed[0, 0].numpy()), image.with_data(moving[0, 0].numpy()), truth[0].numpy()


def test_training_lowers_the_displacement_error(trained: dict[str, Path]) -> None:
    log = json.loads(trained["log"].read_text())
    assert [v["step"] for v in log["validation"]] == [0, 100, 200]
    first, last = log["validation"][0], log["validation"][-1]
    assert last["epe_mm"] < 0.7 * first["epe_mm"], (first, last)
    assert set(log["history"][0]) == {"step", "elapsed_s", "total", "mse_mm2", "epe_mm"}


def test_held_out_synthetic_deformations_are_recovered(trained: dict[str, Path]) -> None:
    """Unseen textures and field seeds: the mean error (mm) drops well below the identity's."""
    params = REGNET.resolve_params({"checkpoint": str(trained["model"])})
    before, after = [], []
    for seed in HELD_OUT_SEEDS:
        for category in ("single", "mixed"):
            fixed, moving, truth = held_out_pair(seed, category)
            result = REGNET.register(fixed, moving, params)
            assert result.disp_vox.shape == (2, *SHAPE) and result.disp_vox.dtype == np.float32
            before.append(mean_error_mm(np.zeros_like(truth), truth, fixed.spacing))
            after.append(mean_error_mm(result.disp_vox, truth, fixed.spacing))
    # measured: 0.80 mm -> 0.55 mm (identity -> RegNet, mean of 8 pairs)
    assert np.mean(after) < 0.8 * np.mean(before), (np.mean(before), np.mean(after))


def test_instance_optimisation_lowers_the_ncc_loss(trained: dict[str, Path]) -> None:
    fixed, moving, _ = held_out_pair(HELD_OUT_SEEDS[0], "single")
    params = REGNET.resolve_params({"checkpoint": str(trained["model"]), "io_steps": "15", "io_lr": "1e-3"})
    result = REGNET.register(fixed, moving, params)
    history = result.loss_history
    assert len(history) == 15 and set(history[0]) == {"iteration", "elapsed_s", "total", "ncc", "diffusion"}
    assert history[-1]["total"] < history[0]["total"], (history[0], history[-1])


def test_checkpoint_round_trip_through_the_cli(trained: dict[str, Path], tmp_path: Path) -> None:
    """`register --param checkpoint=...` writes the field the in-process prediction gives (ITK file, mm)."""
    fixed, moving, _ = held_out_pair(HELD_OUT_SEEDS[1], "mixed")
    fixed_path, moving_path = write_image(fixed.data, tmp_path / "f.nii.gz"), write_image(moving.data, tmp_path / "m.nii.gz")
    proc = subprocess.run(
        [sys.executable, "-m", "registration_core", "register", "--method", "regnet", "--fixed", str(fixed_path),
         "--moving", str(moving_path), "--out", str(tmp_path / "reg"), "--param", f"checkpoint={trained['model']}",
         "--param", "device=cpu"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    reference = load_image(fixed_path)
    expected = REGNET.register(reference, load_image(moving_path), REGNET.resolve_params({"checkpoint": str(trained["model"])}))
    written = load_displacement(tmp_path / "reg" / "displacement.nii.gz", reference)
    np.testing.assert_allclose(written, expected.disp_vox, atol=1e-4)
    log = json.loads((tmp_path / "reg" / "log.json").read_text())
    assert log["model_params"]["patch_size"] == 9 and log["model_params"]["synth"] == "single+mixed"


# -- real brain slices ------------------------------------------------------------------------------


def brain_slices(path: Path, slices: range) -> list[Image]:
    """Axial slices of a 1 mm brain volume, averaged 2x2 into 2 mm voxels (80x96 for 160x192x224)."""
    volume = load_image(path).data
    images = []
    for k in slices:
        plane = volume[:, :, k]
        plane = plane[: plane.shape[0] // 2 * 2, : plane.shape[1] // 2 * 2]
        coarse = plane.reshape(plane.shape[0] // 2, 2, plane.shape[1] // 2, 2).mean(axis=(1, 3))
        images.append(Image(coarse.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])))
    return images


@pytest.mark.realdata
@pytest.mark.slow
def test_real_brain_slices_held_out_deformations(shared_data: Path, tmp_path: Path) -> None:
    """Train on 10 slices of one brain (aligned-brains subject-a), recover unseen synthetic fields on
    another subject's slices (subject-b): the mean error in mm inside the head drops below the identity's."""
    brains = shared_data / "aligned-brains"
    slices = brain_slices(brains / "subject-a" / "t1w.nii.gz", range(88, 148, 6))
    training = [write_image(image.data, tmp_path / f"a{n}.nii.gz", spacing_mm=2.0) for n, image in enumerate(slices)]
    raw = {"patch_size": "15", "steps": "300", "val_every": "100", "max_disp_mm": "8", "grid_spacing_mm": "40", "device": "cpu"}
    train_method("regnet", training, tmp_path / "model", raw)
    params = REGNET.resolve_params({"checkpoint": str(tmp_path / "model" / "model.pt")})
    before, after = [], []
    for n, image in enumerate(brain_slices(brains / "subject-b" / "t1w.nii.gz", range(106, 136, 10))):
        for category in ("single", "mixed"):
            disp = synthetic_displacement(category, image, np.random.default_rng(1000 + n), 8.0, 40.0)
            fixed, moving, truth = synthetic_pair(
                torch.from_numpy(image.data)[None, None], torch.from_numpy(disp)[None], torch.zeros(2)
            )
            result = REGNET.register(image.with_data(fixed[0, 0].numpy()), image.with_data(moving[0, 0].numpy()), params)
            head = image.data > 0.05
            truth_np = truth[0].numpy()
            before.append(mean_error_mm(np.zeros_like(truth_np)[:, head], truth_np[:, head], image.spacing))
            after.append(mean_error_mm(result.disp_vox[:, head], truth_np[:, head], image.spacing))
    assert np.mean(after) < 0.85 * np.mean(before), (np.mean(before), np.mean(after))


def test_published_activations_are_relu_in_the_convolutions_and_elu_in_the_head() -> None:
    published, leaky = RegNetCNN(2, 5, 4, "published"), RegNetCNN(2, 5, 4)
    kinds = [type(m) for m in published.fine] + [type(m) for m in published.context]
    assert nn.ReLU in kinds and nn.LeakyReLU not in kinds and nn.ELU not in kinds
    assert [type(m) for m in published.head].count(nn.ELU) == 2
    assert not any(isinstance(m, (nn.ReLU, nn.ELU)) for m in leaky.modules())
