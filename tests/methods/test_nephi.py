"""NePhi: point sampling and NCC by hand, identity start, chunked dense fields, instance optimisation
recovering a known shift (and its inverse), learning over shifted disks through the CLI, real brain slices."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from registration_core.core.io import Image, load_displacement, load_image, save_image
from registration_core.core.losses import point_ncc_loss
from registration_core.core.spatial import compose, identity_grid_norm, warp_array
from registration_core.errors import InputError
from registration_core.evaluation.metrics import dice_summary, jacobian_stats
from registration_core.methods import get_method
from registration_core.methods.nephi import grid_points_norm, point_count, sample_at_points

NEPHI = get_method("nephi")
SMALL = {"hidden": 32, "sim_points": 512, "reg_points": 32}
"""A small network and few points: fast tests on 32x32 images."""


def disk(shape: tuple[int, ...], centre: tuple[float, ...], radius: float) -> np.ndarray:
    """A soft disk/ball (values in (0, 1), edge width ~1 voxel), float32."""
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre)))
    return (1.0 / (1.0 + np.exp(distance - radius))).astype(np.float32)


def test_point_ncc_by_hand() -> None:
    """f = [1, 2, 3], w = [1, 3, 2]: centred [-1, 0, 1] and [-1, 1, 0], cov 1/3, variances 2/3 -> NCC 1/2."""
    f = torch.tensor([[[1.0, 2.0, 3.0]]], dtype=torch.float64)
    w = torch.tensor([[[1.0, 3.0, 2.0]]], dtype=torch.float64)
    assert float(point_ncc_loss(f, w)) == pytest.approx(0.5, rel=1e-4)
    assert float(point_ncc_loss(f, 3.0 * f + 7.0)) == pytest.approx(0.0, abs=1e-4)
    assert float(point_ncc_loss(f, -f)) == pytest.approx(2.0, abs=1e-4)
    with pytest.raises(ValueError, match="point_ncc_loss"):
        point_ncc_loss(f, w[..., :2])


@pytest.mark.parametrize("shape", [(5, 7), (4, 5, 6)])
def test_points_at_voxel_centres_sample_the_voxel_values(shape: tuple[int, ...]) -> None:
    image = torch.arange(float(np.prod(shape))).reshape(1, 1, *shape)
    index = torch.tensor([[1, 2, 3][: len(shape)], [n - 1 for n in shape]], dtype=torch.float32)
    points_norm = index / (torch.tensor(shape, dtype=torch.float32) - 1) * 2 - 1
    values = sample_at_points(image, points_norm[None])[0, 0]
    expected = [image[(0, 0, *map(int, idx))] for idx in index]
    torch.testing.assert_close(values, torch.stack(expected))


@pytest.mark.parametrize("shape", [(5, 7), (4, 5, 6), (1, 3, 4)])
def test_chunk_coordinates_are_the_identity_grid_in_c_order(shape: tuple[int, ...]) -> None:
    grid = identity_grid_norm(shape).reshape(1, len(shape), -1).transpose(1, 2)
    torch.testing.assert_close(grid_points_norm(shape, 0, grid.shape[1], grid), grid)
    torch.testing.assert_close(grid_points_norm(shape, 3, 11, grid), grid[:, 3:11])


def test_encoder_branches_local_codes_at_the_closest_grid() -> None:
    """(80, 128): stride-2 maps 40x64, 20x32, 10x16, 5x8, 3x4, 2x2; closest to 8 per axis in log size: 5x8."""
    model = NEPHI.build_model((80, 128), NEPHI.resolve_params({}))
    assert model.encoder.coarse_shape == (5, 8)
    assert len(model.encoder.layers) == 6


@pytest.mark.parametrize("shape", [(32, 36), (16, 20, 18)])
def test_fresh_network_is_the_identity_both_ways(shape: tuple[int, ...]) -> None:
    params = NEPHI.resolve_params(SMALL)
    torch.manual_seed(0)
    model = NEPHI.build_model(shape, params)
    fixed, moving = torch.rand(2, 1, *shape), torch.rand(2, 1, *shape)
    disp = NEPHI.predict(model, fixed, moving, params)
    inverse = NEPHI.predict_inverse(model, fixed, moving, params)
    assert disp.shape == inverse.shape == (2, len(shape), *shape)
    assert float(disp.abs().max()) == 0.0 and float(inverse.abs().max()) == 0.0
    total, terms = NEPHI.loss(model, {"fixed": fixed, "moving": moving}, params)
    assert set(terms) == {"sim", "gradicon", "latent"}
    assert float(terms["gradicon"].detach()) < 1e-6  # id o id
    total.backward()
    assert model.forward_field.head.weight.grad.abs().sum() > 0
    assert model.pair_global.grad is None  # training never touches the instance codes


def test_dense_field_is_in_voxels_and_independent_of_the_chunk_size() -> None:
    shape = (9, 13)
    params = NEPHI.resolve_params(SMALL)
    torch.manual_seed(0)
    model = NEPHI.build_model(shape, params)
    with torch.no_grad():
        model.forward_field.head.weight.normal_(0.0, 0.1)
    pair = torch.rand(1, 1, *shape), torch.rand(1, 1, *shape)
    codes = model.codes(*pair)
    whole = model.dense_displacement("forward", codes, chunk=10_000)
    torch.testing.assert_close(model.dense_displacement("forward", codes, chunk=7), whole)
    # voxel (4, 6) sits at normalised (0, 0); one voxel is 2 / (n - 1) normalised units
    centre = model.displacement("forward", torch.zeros(1, 1, 2), codes)[0, 0].detach()
    torch.testing.assert_close(whole[0, :, 4, 6], centre * torch.tensor([8 / 2, 12 / 2]))


@pytest.mark.parametrize("ndim", [2, 3])
def test_instance_optimisation_from_scratch_recovers_a_shift_and_its_inverse(ndim: int) -> None:
    """The moving disk is the fixed one moved by +3 voxels along axis 0: u = +3 and v = -3 on the disk."""
    shape = (32, 32) if ndim == 2 else (24, 24, 24)
    centre = tuple(n / 2 - 0.5 for n in shape)
    fixed = disk(shape, centre, 6.0)
    moving = disk(shape, (centre[0] + 3, *centre[1:]), 6.0)
    params = NEPHI.resolve_params({**SMALL, "io_steps": 80 if ndim == 2 else 60})
    result = NEPHI.register(Image(fixed, np.eye(4)), Image(moving, np.eye(4)), params)
    on_fixed, on_moving = fixed > 0.5, moving > 0.5
    assert result.disp_vox[0][on_fixed].mean() == pytest.approx(3.0, abs=0.3)
    assert np.abs(result.disp_vox[1:][:, on_fixed]).mean() < 0.3
    assert result.inverse_disp_vox[0][on_moving].mean() == pytest.approx(-3.0, abs=0.3)
    history = result.loss_history
    assert len(history) == params["io_steps"] and history[-1]["sim"] < 0.2 * history[0]["sim"]
    assert jacobian_stats(result.disp_vox)["neg_jac_ratio"] == 0.0


def test_without_checkpoint_io_steps_must_be_positive() -> None:
    img = Image(disk((32, 32), (16, 16), 6), np.eye(4))
    with pytest.raises(InputError, match="io_steps"):
        NEPHI.register(img, img, NEPHI.resolve_params({"io_steps": 0}))


def _run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "registration_core", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_training_over_shifted_disks_predicts_a_held_out_shift_via_the_cli(tmp_path: Path) -> None:
    """Train on disks shifted by -4..4 voxels along axis 0; predict (no instance optimisation) a 3-voxel
    shift between two positions never seen: u ~ -3 (moving point = fixed point - 3)."""
    shape = (32, 32)
    images = []
    for shift in (-4, -2, 0, 2, 4):
        images.append(tmp_path / f"disk{shift}.nii.gz")
        save_image(Image(disk(shape, (15.5 + shift, 15.5), 6.0), np.eye(4)), images[-1])
    fixed, moving = tmp_path / "fixed.nii.gz", tmp_path / "moving.nii.gz"
    save_image(Image(disk(shape, (16.5, 15.5), 6.0), np.eye(4)), fixed)
    save_image(Image(disk(shape, (13.5, 15.5), 6.0), np.eye(4)), moving)
    small = [f"{key}={value}" for key, value in SMALL.items()]
    train = _run_cli("train", "--method", "nephi", "--images", *images, "--out", tmp_path / "model",
                     *[arg for p in [*small, "steps=300", "lr=0.001", "val_every=150"] for arg in ("--param", p)])
    assert train.returncode == 0, train.stderr
    log = json.loads((tmp_path / "model" / "log.json").read_text())
    assert log["validation"][-1]["total"] < 0.3 * log["validation"][0]["total"]
    register = _run_cli("register", "--method", "nephi", "--fixed", fixed, "--moving", moving, "--out", tmp_path / "reg",
                        "--param", f"checkpoint={tmp_path / 'model' / 'model.pt'}", "--param", "io_steps=0")
    assert register.returncode == 0, register.stderr
    reference = load_image(fixed)
    disp = load_displacement(tmp_path / "reg" / "displacement.nii.gz", reference)
    inverse = load_displacement(tmp_path / "reg" / "inverse_displacement.nii.gz", reference)
    on_fixed = reference.data > 0.5
    assert disp[0][on_fixed].mean() == pytest.approx(-3.0, abs=0.75)  # 300 steps (the released GradICON and prior scales)
    assert inverse[0][load_image(moving).data > 0.5].mean() == pytest.approx(3.0, abs=0.75)
    warped = load_image(tmp_path / "reg" / "warped.nii.gz").data
    moving_data = load_image(moving).data
    assert ((warped - reference.data) ** 2).mean() < 0.1 * ((moving_data - reference.data) ** 2).mean()
    assert json.loads((tmp_path / "reg" / "log.json").read_text())["model_params"]["hidden"] == 32


@pytest.mark.realdata
@pytest.mark.slow
def test_real_slice_pair_by_instance_optimisation_alone(oasis_2d_slice: Callable[[str], tuple]) -> None:
    """oasis-trt sub-03 -> sub-01 (not affinely aligned), fresh network, default 300 IO steps: Dice over the
    24 shared labels rises from 0.29 (measured 0.49), no folding, and the inverse undoes the forward map
    inside the brain to about half a voxel."""
    (fixed, fixed_labels), (moving, moving_labels) = oasis_2d_slice("sub-01"), oasis_2d_slice("sub-03")
    labels = sorted(set(np.unique(fixed_labels.data)) & set(np.unique(moving_labels.data)) - {0})
    result = NEPHI.register(fixed, moving, NEPHI.resolve_params({}))
    before = dice_summary(fixed_labels.data, moving_labels.data, labels)["mean"]
    after = dice_summary(fixed_labels.data, warp_array(moving_labels.data, result.disp_vox, "nearest"), labels)["mean"]
    assert after > before + 0.12, (before, after)
    assert jacobian_stats(result.disp_vox)["neg_jac_ratio"] < 1e-3
    # psi(phi(x)) - x in voxels, inside the fixed brain
    round_trip = compose(torch.from_numpy(result.inverse_disp_vox)[None], torch.from_numpy(result.disp_vox)[None])
    error = round_trip[0].norm(dim=0).numpy()[fixed_labels.data > 0]
    # measured (2 mm voxels): mean 0.49, 95th percentile 1.30 voxels; GradICON constrains the composition's
    # Jacobian, the two similarity terms its offset
    assert error.mean() < 0.75 and np.percentile(error, 95) < 2.0, (error.mean(), np.percentile(error, 95))


def test_latent_prior_is_the_mean_l2_norm_of_the_codes() -> None:
    """Global codes (3, 4) and (0, 0) -> norms 5, 0 -> 2.5; local codes all (1, 1, 1, 1) -> norm 2: prior 4.5."""
    from registration_core.methods.nephi import LatentCodes

    codes = LatentCodes(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), torch.ones(2, 4, 3, 3))
    assert float(codes.prior()) == pytest.approx(4.5)


def test_point_counts_fixed_or_proportional_to_the_image() -> None:
    """Default: 4,096 / 256 points; published: 2 % of the voxels and 0.01 %, bounded to 10-500."""
    method = get_method("nephi")
    default = method.resolve_params({})
    assert point_count(default, "sim", 10**6) == 4096 and point_count(default, "reg", 10**6) == 256
    published = method.resolve_params({"preset": "published"})
    assert published["hidden"] == 512 and published["io_steps"] == 800
    assert point_count(published, "sim", 160 * 192 * 144) == round(0.02 * 160 * 192 * 144)
    assert point_count(published, "reg", 160 * 192 * 144) == 442
    assert point_count(published, "reg", 64 * 64) == 10 and point_count(published, "reg", 10**8) == 500
    with pytest.raises(InputError, match="sim_ratio"):
        method.resolve_params({"sim_ratio": 1.5})
