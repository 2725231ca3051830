"""VoxelMorph: field operations with hand-computed values, the network's shapes, training on shifted
blobs, the checkpoint round trip through the CLI, instance optimisation and real brain slices."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from registration_core.core.io import Image, load_displacement, load_image, save_image
from registration_core.core.spatial import compose, warp_array
from registration_core.errors import InputError
from registration_core.evaluation.metrics import dice_summary
from registration_core.methods import get_method
from registration_core.methods.training import train_method
from registration_core.methods.voxelmorph import (
    gradient_l2_loss,
    resize_field,
    scaling_and_squaring,
    soft_dice_loss,
)

from support.benchmarks import benchmark, held_out_pairs

pytestmark = pytest.mark.usefixtures("torch_one_thread")

VXM = get_method("voxelmorph")
SMALL = {"enc_features": "8,16", "dec_features": "16,16,8"}
BLOB_SHAPE = (32, 32)



def blob(centre: tuple[float, ...], shape: tuple[int, ...] = BLOB_SHAPE, sigma: float = 4.0) -> np.ndarray:
    """Gaussian blob (peak 1) centred at ``centre`` (voxels, array order)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    r2 = sum((grid[d] - c) ** 2 for d, c in enumerate(centre))
    return np.exp(-r2 / (2 * sigma**2)).astype(np.float32)


# -- field operations ---------------------------------------------------------------------------


def test_resize_keeps_a_constant_map_in_voxels_of_the_new_grid() -> None:
    # (9, 5) -> (3, 3): 8 -> 2 intervals along i (x 1/4), 4 -> 2 along j (x 1/2)
    field = torch.tensor([2.0, 1.0]).view(1, 2, 1, 1).expand(1, 2, 9, 5)
    out = resize_field(field, (3, 3))
    assert out.shape == (1, 2, 3, 3)
    np.testing.assert_allclose(out[0, 0], 0.5, atol=1e-6)
    np.testing.assert_allclose(out[0, 1], 0.5, atol=1e-6)


def test_scaling_and_squaring_of_a_constant_velocity_is_the_translation() -> None:
    velocity = torch.tensor([1.5, -0.5]).view(1, 2, 1, 1).expand(1, 2, 12, 10).contiguous()
    np.testing.assert_allclose(scaling_and_squaring(velocity, 7), velocity, atol=1e-5)


def test_scaling_and_squaring_of_a_linear_contraction() -> None:
    """v(x) = a (x - c) along i: n squarings give ((1 + a / 2**n)**(2**n) - 1)(x - c), exactly (linear sampling)."""
    a, n, c = -0.2, 7, 16.0
    i = torch.arange(33, dtype=torch.float64).view(33, 1).expand(33, 8)
    velocity = torch.stack([a * (i - c), torch.zeros_like(i)])[None]
    disp = scaling_and_squaring(velocity, n)
    expected = ((1 + a / 2**n) ** (2**n) - 1) * (i - c)
    np.testing.assert_allclose(disp[0, 0], expected, atol=1e-9)
    np.testing.assert_allclose(disp[0, 1], 0.0, atol=1e-12)
    assert abs((1 + a / 2**n) ** (2**n) - math.exp(a)) < 2e-4  # close to exp(v)


def test_negated_velocity_integrates_to_the_inverse() -> None:
    torch.manual_seed(0)
    coarse = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    velocity = torch.nn.functional.interpolate(coarse, size=(40, 40), mode="bilinear", align_corners=True)
    velocity = 2.0 * velocity / velocity.abs().max()  # smooth, up to 2 voxels
    forward, inverse = scaling_and_squaring(velocity, 7), scaling_and_squaring(-velocity, 7)
    residual = compose(inverse, forward)[..., 5:-5, 5:-5]  # x -> inverse(forward(x)) - x
    assert forward.abs().max() > 1.0 and residual.abs().max() < 0.1 and residual.abs().mean() < 0.01


def test_gradient_loss_is_the_mean_over_axes() -> None:
    """u_0 = i on a 3x3 grid, u_1 = 0: axis i has mean((1, 0)^2) = 0.5 over channels, axis j 0 -> 0.25."""
    i = torch.arange(3.0).view(3, 1).expand(3, 3)
    field = torch.stack([i, torch.zeros_like(i)])[None]
    assert float(gradient_l2_loss(field)) == pytest.approx(0.25)


def test_soft_dice_loss_hand_values() -> None:
    fixed = torch.zeros(1, 1, 6, 6, dtype=torch.int64)
    fixed[..., 1:3, 1:3] = 1
    moving = torch.zeros_like(fixed)
    moving[..., 1:3, 2:4] = 1  # one column to the right of the fixed square
    zero = torch.zeros(1, 2, 6, 6)
    shift = zero.clone()
    assert float(soft_dice_loss(fixed, fixed, zero)) == pytest.approx(0.0)
    assert float(soft_dice_loss(fixed, moving, zero)) == pytest.approx(0.5)  # overlap 2 of 4 + 4
    shift[:, 1] = 1.0  # warped(x) = moving(x + (0, 1)): the square lands on the fixed one
    assert float(soft_dice_loss(fixed, moving, shift)) == pytest.approx(0.0, abs=1e-6)
    shift[:, 1] = 0.5  # columns 1..3 get 0.5, 1, 0.5: Dice = 2 * 3 / (4 + 4)
    assert float(soft_dice_loss(fixed, moving, shift)) == pytest.approx(0.25, abs=1e-6)


def test_soft_dice_ignores_labels_absent_from_a_pair() -> None:
    """Pair 0 has labels 1 and 2 (perfect), pair 1 only label 1 (perfect): loss 0, not diluted by 0/0."""
    fixed = torch.zeros(2, 1, 4, 4, dtype=torch.int64)
    fixed[0, :, :2] = 1
    fixed[0, :, 2:] = 2
    fixed[1, :, :2] = 1
    assert float(soft_dice_loss(fixed, fixed.clone(), torch.zeros(2, 2, 4, 4))) == pytest.approx(0.0)


# -- parameters and network ---------------------------------------------------------------------


def test_published_defaults_and_smoothness_weight_per_similarity() -> None:
    params = VXM.resolve_params({})
    assert (params["enc_features"], params["dec_features"]) == ("16,32,32,32", "32,32,32,32,32,16,16")
    assert (params["output"], params["int_steps"], params["int_downsize"]) == ("diffeomorphic", 7, 2)
    assert (params["similarity"], params["ncc_window"], params["smooth_weight"]) == ("ncc", 9, 1.0)
    assert (params["lr"], params["batch_size"], params["dice_weight"]) == (1e-3, 1, 0.0)  # CPU budget; published 1e-4
    assert VXM.resolve_params({"similarity": "mse"})["smooth_weight"] == 0.01
    assert VXM.resolve_params({"similarity": "mse", "smooth_weight": "0.5"})["smooth_weight"] == 0.5


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"enc_features": "16,a"}, "parameter 'enc_features' must be comma-separated positive integers"),
        ({"dec_features": "16,0,8"}, "parameter 'dec_features' must be comma-separated positive integers"),
        ({"enc_features": "8,8,8", "dec_features": "8,8"}, "'dec_features' needs at least 3 entries"),
        ({"ncc_window": "8"}, "parameter 'ncc_window' must be odd"),
        ({"output": "velocity"}, "parameter 'output' must be one of diffeomorphic, displacement"),
    ],
)
def test_bad_parameters_name_the_parameter(raw: dict[str, str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        VXM.resolve_params(raw)


def test_default_2d_network_has_the_published_layers() -> None:
    """Convolutions (in, out) of the published 2D network: encoder, decoder levels (after concatenation
    with the skips 32, 32, 32, 16), full-resolution convolutions, flow."""
    convs = [(2, 16), (16, 32), (32, 32), (32, 32), (32, 32), (64, 32), (64, 32), (64, 32),
             (48, 32), (32, 16), (16, 16), (16, 2)]
    expected = sum(cin * cout * 9 + cout for cin, cout in convs)
    model = VXM.build_model((64, 64), VXM.resolve_params({}))
    assert sum(p.numel() for p in model.parameters()) == expected == 109170
    assert float(model.flow.weight.detach().std()) == pytest.approx(1e-5, rel=0.2) and not model.flow.bias.any()


@pytest.mark.parametrize(
    ("shape", "raw"),
    [
        ((37, 45), {}),  # axes not multiples of 16: upsampling follows the skips
        ((16, 16, 20), {"enc_features": "4,4", "dec_features": "4,4,4"}),
        ((16, 18, 20), {"enc_features": "4,4", "dec_features": "4,4", "output": "displacement"}),
    ],
)
def test_untrained_network_predicts_almost_the_identity(shape: tuple[int, ...], raw: dict[str, str]) -> None:
    params = VXM.resolve_params(raw)
    torch.manual_seed(0)
    model = VXM.build_model(shape, params)
    fixed, moving = torch.rand(2, 1, *shape), torch.rand(2, 1, *shape)
    with torch.no_grad():
        disp, field = model(fixed, moving)
    coarse = tuple(n // 2 for n in shape) if params["output"] == "diffeomorphic" else shape
    assert disp.shape == (2, len(shape), *shape) and field.shape == (2, len(shape), *coarse)
    assert 0 < float(disp.abs().max()) < 1e-2
    inverse = VXM.predict_inverse(model, fixed, moving, params)
    assert (inverse is None) == (params["output"] == "displacement")


def test_too_small_images_are_refused() -> None:
    with pytest.raises(InputError, match=r"image shape \(12, 40\) is too small for 4 encoder levels"):
        VXM.build_model((12, 40), VXM.resolve_params({}))


def test_dice_weight_without_training_labels_is_refused() -> None:
    params = VXM.resolve_params({**SMALL, "dice_weight": "1"})
    model = VXM.build_model(BLOB_SHAPE, params)
    batch = {"fixed": torch.rand(1, 1, *BLOB_SHAPE), "moving": torch.rand(1, 1, *BLOB_SHAPE)}
    with pytest.raises(InputError, match="'dice_weight' > 0 needs training label maps"):
        VXM.loss(model, batch, params)
    batch.update(fixed_labels=torch.ones(1, 1, *BLOB_SHAPE, dtype=torch.int64),
                 moving_labels=torch.ones(1, 1, *BLOB_SHAPE, dtype=torch.int64))
    total, terms = VXM.loss(model, batch, params)
    assert set(terms) == {"sim", "grad", "dice"} and float(terms["dice"].detach()) == pytest.approx(0.0, abs=1e-5)
    assert set(VXM.instance_loss(model, batch, params)[1]) == {"sim", "grad"}


# -- training on shifted blobs --------------------------------------------------------------------

TRAIN_CENTRES = [(16.0 + a, 16.0 + b) for a, b in np.random.default_rng(0).uniform(-3, 3, (8, 2))]
HELD_OUT = {"fixed": (14.0, 18.0), "moving": (18.0, 15.0)}  # the map fixed -> moving shifts by (4, -3)
TRAIN_PARAMS = {**SMALL, "similarity": "mse", "lr": "3e-3", "batch_size": "4", "steps": "300", "val_every": "100"}


def write_image(data: np.ndarray, path: Path) -> Path:
    save_image(Image(data, np.diag([1.0, 1.0, 1.0, 1.0])), path)
    return path


def test_training_without_labels_for_dice_writes_nothing(tmp_path: Path) -> None:
    images = [write_image(blob((16 + d, 16 - d)), tmp_path / f"i{d}.nii.gz") for d in range(3)]
    out = tmp_path / "model"
    with pytest.raises(InputError, match=r"'dice_weight' > 0 needs label maps \(--labels\)"):
        train_method("voxelmorph", images, out, {**SMALL, "dice_weight": "1", "steps": "1"})
    assert not out.exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, torch_one_thread: None) -> dict[str, Path]:
    """300 MSE training steps on 8 blobs shifted by up to 3 voxels (one thread: ~10 s)."""
    root = tmp_path_factory.mktemp("vxm")
    images = [write_image(blob(c), root / f"train{n}.nii.gz") for n, c in enumerate(TRAIN_CENTRES)]
    train_method("voxelmorph", images, root / "model", TRAIN_PARAMS)
    return {
        "model": root / "model" / "model.pt",
        "log": root / "model" / "log.json",
        **{key: write_image(blob(c), root / f"{key}.nii.gz") for key, c in HELD_OUT.items()},
    }


def test_training_lowers_the_loss_and_registers_a_held_out_pair(trained: dict[str, Path]) -> None:
    log = json.loads(trained["log"].read_text())
    assert [v["step"] for v in log["validation"]] == [0, 100, 200, 300]
    assert log["validation"][-1]["sim"] < 0.2 * log["validation"][0]["sim"]
    params = VXM.resolve_params({"checkpoint": str(trained["model"])})
    fixed, moving = load_image(trained["fixed"]), load_image(trained["moving"])
    result = VXM.register(fixed, moving, params)
    assert result.disp_vox.shape == (2, *BLOB_SHAPE) and result.disp_vox.dtype == np.float32
    warped = warp_array(moving.data, result.disp_vox)
    mse_before, mse_after = np.mean((moving.data - fixed.data) ** 2), np.mean((warped - fixed.data) ** 2)
    assert mse_after < 0.1 * mse_before, (mse_before, mse_after)
    # the blob's centre moves by about (4, -3) voxels (fixed point -> moving point)
    np.testing.assert_allclose(result.disp_vox[:, 14, 18], [4.0, -3.0], atol=1.0)
    # the inverse field carries the moving centre back (diffeomorphic output)
    np.testing.assert_allclose(result.inverse_disp_vox[:, 18, 15], [-4.0, 3.0], atol=1.0)


def test_instance_optimisation_lowers_the_pair_loss(trained: dict[str, Path]) -> None:
    fixed, moving = load_image(trained["fixed"]), load_image(trained["moving"])
    params = VXM.resolve_params({"checkpoint": str(trained["model"]), "io_steps": "30", "io_lr": "1e-3"})
    result = VXM.register(fixed, moving, params)
    history = result.loss_history
    assert len(history) == 30 and set(history[0]) == {"iteration", "elapsed_s", "total", "sim", "grad"}
    assert history[-1]["total"] < 0.7 * history[0]["total"], (history[0], history[-1])
    plain = VXM.register(fixed, moving, VXM.resolve_params({"checkpoint": str(trained["model"])}))

    def mse(disp: np.ndarray) -> float:
        return float(np.mean((warp_array(moving.data, disp) - fixed.data) ** 2))

    assert mse(result.disp_vox) < mse(plain.disp_vox)


def test_checkpoint_round_trip_through_the_cli(trained: dict[str, Path], tmp_path: Path) -> None:
    """`register --param checkpoint=...` writes the field the in-process prediction gives (ITK file, mm)."""
    out = tmp_path / "reg"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "registration_core", "register", "--method", "voxelmorph",
         "--fixed", str(trained["fixed"]), "--moving", str(trained["moving"]), "--out", str(out),
         "--param", f"checkpoint={trained['model']}", "--param", "device=cpu"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    fixed = load_image(trained["fixed"])
    expected = VXM.register(fixed, load_image(trained["moving"]), VXM.resolve_params({"checkpoint": str(trained["model"])}))
    np.testing.assert_allclose(load_displacement(out / "displacement.nii.gz", fixed), expected.disp_vox, atol=1e-4)
    log = json.loads((out / "log.json").read_text())
    assert log["model_params"]["similarity"] == "mse" and log["model_params"]["smooth_weight"] == 0.01
    assert (out / "inverse_displacement.nii.gz").is_file()


def test_checkpoint_of_another_shape_is_refused(trained: dict[str, Path]) -> None:
    image = Image(blob((20.0, 20.0), shape=(40, 40)), np.eye(4))
    with pytest.raises(InputError, match=r"trained on images of shape \(32, 32\)"):
        VXM.register(image, image, VXM.resolve_params({"checkpoint": str(trained["model"])}))


# -- real brain slices ------------------------------------------------------------------------------

@pytest.mark.realdata
@pytest.mark.slow
def test_real_brain_slices_dice_rises_on_held_out_pairs(shared_data: Path, tmp_path: Path) -> None:
    """Affinely aligned axial slices (80x128, 2 mm) of OASIS-TRT: train on sub-03..sub-10 (400 steps),
    register sub-01 <-> sub-02. Measured: mean Dice 0.338 -> 0.419 and 0.244 -> 0.307. The benchmark's
    own alignment settings: a coarse-only pyramid (shrink 4, 50 iterations) left four of nine
    subjects misaligned (slice Dice 0.02-0.13) under some sampling seeds."""
    bench = benchmark("learned_2d")
    files = bench.prepare(shared_data / "oasis-trt", tmp_path / "data")
    training = [files[name][0] for name in bench.TRAIN]
    train_method("voxelmorph", training, tmp_path / "model", {"steps": "400", "lr": "2e-3", "device": "cpu"})
    params = VXM.resolve_params({"checkpoint": str(tmp_path / "model" / "model.pt")})
    for fixed_name, moving_name, fixed, moving, fixed_labels, moving_labels in held_out_pairs(bench, files):
        result = VXM.register(fixed, moving, params)
        labels = sorted(set(np.unique(fixed_labels).tolist()) - {0})
        before = dice_summary(fixed_labels, moving_labels, labels)["mean"]
        after = dice_summary(fixed_labels, warp_array(moving_labels, result.disp_vox, "nearest"), labels)["mean"]
        assert after > before + 0.03, (fixed_name, moving_name, before, after)


def test_published_preset_is_the_published_training() -> None:
    """The published model and loss are the defaults; the published preset adds the training."""
    method = get_method("voxelmorph")
    default, published = method.resolve_params({}), method.resolve_params({"preset": "published"})
    assert (published["steps"], published["lr"], published["batch_size"]) == (150_000, 1e-4, 1)
    same = ("enc_features", "dec_features", "output", "int_steps", "int_downsize", "similarity", "ncc_window", "smooth_weight")
    assert {key: default[key] for key in same} == {key: published[key] for key in same}
    assert method.resolve_params({"preset": "published", "steps": 50})["steps"] == 50  # explicit values win
