"""Linear and deformable CNN (Christodoulidis et al. 2018): grid geometry by hand, identity at
initialisation, training on shifted textures, instance optimisation, CLI round trip, real brains."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from registration_core.core.io import Image, load_displacement, load_image, save_image
from registration_core.core.spatial import warp_array
from registration_core.errors import InputError
from registration_core.evaluation.metrics import dice_summary, jacobian_stats
from registration_core.methods import get_method
from registration_core.methods.linear_deformable import (
    apply_affine,
    identity_affine,
    integrate_gradients,
    logistic_gradients,
    sampling_grid_to_disp_vox,
)
from registration_core.methods.training import train_method

from support.benchmarks import benchmark, held_out_pairs
from support.paths import REPO_ROOT

pytestmark = pytest.mark.usefixtures("torch_one_thread")

METHOD = get_method("linear_deformable")
SHAPE = (32, 32)
TINY = {"features": 4, "device": "cpu"}


# -- geometry ----------------------------------------------------------------------------------------


def test_logistic_gradients_are_one_at_zero_and_bounded() -> None:
    logits = torch.tensor([-30.0, -1.0, 0.0, 1.0, 30.0])
    grads = logistic_gradients(logits, 2.0)
    torch.testing.assert_close(grads, 2.0 * torch.sigmoid(logits))  # the paper's 2 * sigmoid
    assert float(grads[2]) == 1.0 and float(grads.min()) >= 0.0 and float(grads.max()) <= 2.0
    assert float(logistic_gradients(torch.zeros(()), 4.0)) == 1.0
    assert float(logistic_gradients(torch.tensor(30.0), 4.0)) == pytest.approx(4.0)


def test_integrated_gradients_by_hand() -> None:
    """Axis 0 spacings (0.5, 1, 2) -> grid -0.5, 0.5, 2.5; axis 1 spacings of 1 -> indices 0, 1."""
    gradients = torch.ones(1, 2, 3, 2)
    gradients[0, 0] = torch.tensor([0.5, 1.0, 2.0])[:, None]
    grid = integrate_gradients(gradients)
    torch.testing.assert_close(grid[0, 0], torch.tensor([[-0.5, -0.5], [0.5, 0.5], [2.5, 2.5]]))
    torch.testing.assert_close(grid[0, 1], torch.tensor([[0.0, 1.0]] * 3))


@pytest.mark.parametrize("shape", [(6, 5), (4, 5, 3)])
def test_unit_gradients_and_identity_affine_give_zero_displacement(shape: tuple[int, ...]) -> None:
    ndim = len(shape)
    disp = sampling_grid_to_disp_vox(torch.ones(2, ndim, *shape), identity_affine(ndim, 2))
    assert disp.shape == (2, ndim, *shape)
    assert float(disp.abs().max()) < 1e-5


def test_affine_translation_and_scale_in_normalised_coordinates() -> None:
    """n = 5 along axis 0 (normalised step 0.5): t = 0.5 is one voxel; M = 0.5 pulls towards the centre."""
    shape = (5, 4)
    ones = torch.ones(1, 2, *shape)
    shift = identity_affine(2, 1).clone()
    shift[0, 0, 2] = 0.5
    disp = sampling_grid_to_disp_vox(ones, shift)
    torch.testing.assert_close(disp[0, 0], torch.ones(shape))
    torch.testing.assert_close(disp[0, 1], torch.zeros(shape))
    shrink = identity_affine(2, 1).clone()
    shrink[0, 0, 0] = 0.5
    disp = sampling_grid_to_disp_vox(ones, shrink)  # y = 2 + (x - 2) / 2, u = (2 - x) / 2
    torch.testing.assert_close(disp[0, 0, :, 0], torch.tensor([1.0, 0.5, 0.0, -0.5, -1.0]))


def test_the_affine_acts_on_the_deformable_grid() -> None:
    """Gradients 2 along axis 0 (n = 5): G(x) = 2 (x + 1) - 1 = 2x + 1; a translation of t = 0.5
    (one voxel) after it samples at 2x + 2, so u = x + 2. (G after the translation would give x + 3.)"""
    shape = (5, 3)
    gradients = torch.ones(1, 2, *shape)
    gradients[0, 0] = 2.0
    matrix = identity_affine(2, 1).clone()
    matrix[0, 0, 2] = 0.5
    disp = sampling_grid_to_disp_vox(gradients, matrix)
    torch.testing.assert_close(disp[0, 0], torch.arange(5.0)[:, None].expand(shape) + 2.0)
    torch.testing.assert_close(disp[0, 1], torch.zeros(shape))


def test_apply_affine_in_3d_matches_a_matrix_product() -> None:
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(2, 3, 4, 3, 2, generator=generator)
    matrix = torch.randn(2, 3, 4, generator=generator)
    expected = torch.einsum("brc,bcn->brn", matrix[:, :, :3], points.flatten(2)) + matrix[:, :, 3:]
    torch.testing.assert_close(apply_affine(points, matrix).flatten(2), expected)


@pytest.mark.parametrize("shape", [(12, 10), (8, 7, 6)])
def test_sampling_grid_is_strictly_increasing_along_every_axis(shape: tuple[int, ...]) -> None:
    """Any logits: the composed warp without affine keeps voxel order along every grid line."""
    ndim = len(shape)
    logits = 4.0 * torch.randn(1, ndim, *shape, generator=torch.Generator().manual_seed(1))
    disp = sampling_grid_to_disp_vox(logistic_gradients(logits, 2.0), identity_affine(ndim, 1))
    for d in range(ndim):
        position = disp[0, d] + torch.arange(shape[d]).view(*([-1 if a == d else 1 for a in range(ndim)]))
        assert float(position.diff(dim=d).min()) > 0.0


# -- network -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(24, 20), (12, 10, 8)])
def test_untrained_network_is_the_identity_in_2d_and_3d(shape: tuple[int, ...]) -> None:
    params = METHOD.resolve_params(TINY)
    torch.manual_seed(0)
    model = METHOD.build_model(shape, params)
    fixed, moving = torch.rand(2, 1, *shape), torch.rand(2, 1, *shape)
    with torch.no_grad():
        disp = METHOD.predict(model, fixed, moving, params)
        total, terms = METHOD.loss(model, {"fixed": fixed, "moving": moving}, params)
    assert disp.shape == (2, len(shape), *shape) and float(disp.abs().max()) < 1e-5
    assert set(terms) == {"mse", "affine_l1", "gradient_l1"}
    assert float(terms["affine_l1"]) == 0.0 and float(terms["gradient_l1"]) == 0.0
    assert float(total) == pytest.approx(float(((fixed - moving) ** 2).mean()), rel=1e-5)


def test_published_preset_and_no_affine_variant() -> None:
    published = METHOD.resolve_params({"preset": "published"})
    assert (published["features"], published["lr"], published["batch_size"]) == (32, 1e-3, 2)
    assert (published["alpha"], published["beta"]) == (1e-6, 1e-6)
    encoder = METHOD.build_model((16, 16), published).encoder
    assert encoder.channels == 2 + 32 + 64 + 128 + 32 + 32  # the 290 merged channels of the paper
    assert [block[0].dilation for block in encoder.blocks] == [(1, 1), (1, 1), (2, 2), (3, 3), (5, 5)]
    params = METHOD.resolve_params({**TINY, "affine": False})
    model = METHOD.build_model((16, 16), params)
    assert model.affine_head is None
    _, matrix = model(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16))
    torch.testing.assert_close(matrix, identity_affine(2, 1))


def test_bad_shapes_are_refused() -> None:
    params = METHOD.resolve_params(TINY)
    with pytest.raises(InputError, match=r"every axis >= 2 voxels, got shape \(16, 1\)"):
        METHOD.build_model((16, 1), params)
    with pytest.raises(InputError, match="parameter 'max_gradient'"):
        METHOD.resolve_params({"max_gradient": 1.0})


# -- training on shifted textures ------------------------------------------------------------------


def texture(shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    """A smooth random texture in [0, 1] (Gaussian-filtered noise), periodic so shifts wrap cleanly."""
    noise = np.random.default_rng(seed).random(shape)
    img = ndimage.gaussian_filter(noise, sigma=2.5, mode="wrap")
    return ((img - img.min()) / (img.max() - img.min())).astype(np.float32)


def shifted(shift: tuple[float, float]) -> np.ndarray:
    """The texture moved by ``shift`` voxels: ``shifted(s)(x) = texture(x - s)``."""
    return ndimage.shift(texture(), shift, order=3, mode="grid-wrap").astype(np.float32)


def write_images(folder: Path, shifts: list[tuple[float, float]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, shift in enumerate(shifts):
        paths.append(folder / f"image{n}.nii.gz")
        save_image(Image(shifted(shift), np.diag([1.2, 1.2, 1.0, 1.0])), paths[-1])
    return paths



TRAIN_SHIFTS = [(0, 0), (2, -1), (-2, 1), (1, 2), (-1, -2), (2, 2), (-2, -1), (0, 2)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny network trained 400 steps on the texture moved by up to 2 voxels per axis."""
    folder = tmp_path_factory.mktemp("linear_deformable")
    images = write_images(folder / "images", TRAIN_SHIFTS)
    train_method(
        "linear_deformable", images, folder / "model", {**TINY, "steps": 400, "val_every": 100, "lr": 3e-3, "synth_fraction": 0.0},  # inter-image pairs, as published
    )
    return folder / "model"


def held_out_pair() -> tuple[Image, Image]:
    """fixed = texture moved by (1, -1), moving = by (-1, 1): the true displacement is u = (-2, 2)."""
    affine = np.diag([1.2, 1.2, 1.0, 1.0])
    return Image(shifted((1, -1)), affine), Image(shifted((-1, 1)), affine)


def test_training_lowers_the_loss_and_registers_a_held_out_pair(trained: Path) -> None:
    log = json.loads((trained / "log.json").read_text())
    losses = [record["total"] for record in log["history"]]
    assert len(losses) == 400 and np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    assert [v["step"] for v in log["validation"]] == [0, 100, 200, 300, 400]
    assert log["validation"][-1]["mse"] < 0.5 * log["validation"][0]["mse"]
    fixed, moving = held_out_pair()
    result = METHOD.register(fixed, moving, METHOD.resolve_params({"checkpoint": str(trained / "model.pt")}))
    assert result.disp_vox.shape == (2, *SHAPE) and result.disp_vox.dtype == np.float32
    before = float(np.mean((moving.data - fixed.data) ** 2))
    after = float(np.mean((warp_array(moving.data, result.disp_vox) - fixed.data) ** 2))
    assert after < 0.5 * before, (before, after)
    centre = np.median(result.disp_vox[:, 8:-8, 8:-8].reshape(2, -1), axis=1)
    assert np.all(np.abs(centre - np.array([-2.0, 2.0])) < 1.0), centre  # identity is off by 2 voxels per axis


def test_instance_optimisation_refines_the_pair_and_leaves_the_checkpoint(trained: Path) -> None:
    fixed, moving = held_out_pair()
    checkpoint = str(trained / "model.pt")
    plain = METHOD.register(fixed, moving, METHOD.resolve_params({"checkpoint": checkpoint}))
    refine = {"checkpoint": checkpoint, "io_steps": 20, "io_lr": 1e-3}
    refined = METHOD.register(fixed, moving, METHOD.resolve_params(refine))
    assert len(refined.loss_history) == 20 and refined.loss_history[-1]["mse"] < refined.loss_history[0]["mse"]

    def mse(disp: np.ndarray) -> float:
        return float(np.mean((warp_array(moving.data, disp) - fixed.data) ** 2))

    assert mse(refined.disp_vox) < mse(plain.disp_vox)
    again = METHOD.register(fixed, moving, METHOD.resolve_params({"checkpoint": checkpoint}))
    np.testing.assert_array_equal(again.disp_vox, plain.disp_vox)


def test_instance_optimisation_alone_registers_without_a_checkpoint() -> None:
    fixed, moving = held_out_pair()
    with pytest.raises(InputError, match="io_steps=N > 0"):
        METHOD.register(fixed, moving, METHOD.resolve_params(TINY))
    result = METHOD.register(fixed, moving, METHOD.resolve_params({**TINY, "io_steps": 40, "io_lr": 3e-3}))
    assert result.loss_history[-1]["mse"] < 0.7 * result.loss_history[0]["mse"]


def test_same_seed_gives_the_same_network(tmp_path: Path) -> None:
    images = write_images(tmp_path / "images", TRAIN_SHIFTS[:3])
    settings = {**TINY, "steps": 3, "seed": 5}
    first = train_method("linear_deformable", images, tmp_path / "a", settings)
    second = train_method("linear_deformable", images, tmp_path / "b", settings)
    assert [r["total"] for r in first["history"]] == [r["total"] for r in second["history"]]
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[key], b[key]) for key in a)


def _cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "registration_core", *map(str, args)],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )


def test_checkpoint_round_trip_through_the_cli(tmp_path: Path) -> None:
    images = write_images(tmp_path / "images", TRAIN_SHIFTS[:4])
    trained = _cli("train", "--method", "linear_deformable", "--images", *images, "--out", tmp_path / "model",
                   "--param", "steps=2", "--param", "features=2", "--param", "device=cpu")
    assert trained.returncode == 0, trained.stderr
    registered = _cli("register", "--method", "linear_deformable", "--fixed", images[0], "--moving", images[1],
                      "--out", tmp_path / "reg", "--param", f"checkpoint={tmp_path / 'model' / 'model.pt'}")
    assert registered.returncode == 0, registered.stderr
    fixed, moving = load_image(images[0]), load_image(images[1])
    on_disk = load_displacement(tmp_path / "reg" / "displacement.nii.gz", fixed)
    params = METHOD.resolve_params({"checkpoint": str(tmp_path / "model" / "model.pt")})
    in_process = METHOD.register(fixed, moving, params)
    np.testing.assert_allclose(on_disk, in_process.disp_vox, atol=1e-4)
    log = json.loads((tmp_path / "reg" / "log.json").read_text())
    assert log["method"] == "linear_deformable" and log["model_params"]["features"] == 2  # from the checkpoint
    wrong = _cli("register", "--method", "linear_deformable", "--fixed", images[0], "--moving", images[1],
                 "--out", tmp_path / "bad", "--param", f"checkpoint={tmp_path / 'missing.pt'}")
    assert wrong.returncode == 2 and "missing.pt: checkpoint not found" in wrong.stderr


# -- real brains -------------------------------------------------------------------------------------



@pytest.mark.realdata
@pytest.mark.slow
def test_real_2d_brain_slices_dice_rises(shared_data: Path, tmp_path: Path) -> None:
    """Affinely aligned axial slices of OASIS-TRT (benchmarks/learned_2d.py's preparation): train
    with the CPU default (synthetic self-pairs) on sub-03..sub-10, register sub-01 <-> sub-02.
    (Unaligned middle slices overlap at Dice 0.04: a rise there says nothing.)"""
    bench = benchmark("learned_2d")
    files = bench.prepare(shared_data / "oasis-trt", tmp_path / "data")
    train_method("linear_deformable", [files[name][0] for name in bench.TRAIN], tmp_path / "model",
                 {"steps": 300, "device": "cpu", "val_every": 100})
    params = METHOD.resolve_params({"checkpoint": str(tmp_path / "model" / "model.pt")})
    for fixed_name, moving_name, fixed, moving, fixed_labels, moving_labels in held_out_pairs(bench, files):
        labels = sorted(set(np.unique(fixed_labels)) & set(np.unique(moving_labels)) - {0})
        result = METHOD.register(fixed, moving, params)
        before = dice_summary(fixed_labels, moving_labels, labels)["mean"]
        after = dice_summary(fixed_labels, warp_array(moving_labels, result.disp_vox, "nearest"), labels)["mean"]
        assert after > before, (fixed_name, moving_name, before, after)
        assert jacobian_stats(result.disp_vox)["neg_jac_ratio"] < 0.01
