"""Tests of registration_core.preprocessing.steps: intensity and geometric steps, the step runner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from registration_core.core.io import Image, load_image, load_landmarks, ras_to_voxel, save_image, save_landmarks, voxel_to_ras
from registration_core.errors import InputError
from registration_core.preprocessing.steps import (
    STEPS,
    clip_intensity,
    crop_pad,
    extract_slice,
    foreground_centre,
    map_landmarks,
    normalize,
    prepare_subject,
    reorient,
    resample,
    resample_to,
    run_steps,
    validate_steps,
)

# voxel -> RAS with orientation L, P, I (like a DICOM-derived CT) and spacing (2, 1, 3) mm
AFFINE_LPI = np.array([[-2.0, 0, 0, 10.0], [0, -1.0, 0, 20.0], [0, 0, -3.0, 30.0], [0, 0, 0, 1.0]])


def ramp_image(shape: tuple[int, ...] = (8, 6, 5), affine: np.ndarray = AFFINE_LPI) -> Image:
    """Image whose value is the sum of the RAS mm coordinates of each voxel (linear in space)."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float64)
    index = np.concatenate([index, np.zeros((*shape, 3 - len(shape)))], axis=-1)
    ras = index @ affine[:3, :3].T + affine[:3, 3]
    return Image(data=ras.sum(axis=-1).astype(np.float32), affine=affine)


def block_labels(shape: tuple[int, ...] = (8, 6, 5), affine: np.ndarray = AFFINE_LPI) -> Image:
    """Label map with labels 0, 3 and 7 in blocks."""
    data = np.zeros(shape, np.int32)
    data[2:6] = 3
    data[5:, 3:] = 7
    return Image(data=data, affine=affine)


# --------------------------------------------------------------------------- intensity


def test_clip_with_bounds_and_percentiles() -> None:
    image = Image(np.arange(11, dtype=np.float32).reshape(11, 1) * np.ones((1, 2), np.float32), np.eye(4))
    clipped = clip_intensity(image, low=2, high=7)
    assert clipped.data.min() == 2 and clipped.data.max() == 7
    assert clipped.data[5, 0] == 5
    assert clip_intensity(image, high=3).data.min() == 0
    by_percentile = clip_intensity(image, percentiles=[10, 90])  # values 0..10: percentiles 1 and 9
    assert by_percentile.data.min() == pytest.approx(1) and by_percentile.data.max() == pytest.approx(9)
    for kwargs, message in [
        ({}, "needs low and/or high"),
        ({"low": 5, "high": 1}, "low 5 is above high 1"),
        ({"low": 0, "percentiles": [1, 99]}, "not both"),
        ({"percentiles": [90, 10]}, "p_low <= p_high"),
    ]:
        with pytest.raises(InputError, match=message):
            clip_intensity(image, **kwargs)


def test_normalize_minmax_and_zscore() -> None:
    image = Image(np.array([[1.0, 3.0], [5.0, 7.0]], np.float32), np.eye(4))
    np.testing.assert_allclose(normalize(image).data, [[0, 1 / 3], [2 / 3, 1]], rtol=1e-6)
    # mean 4, population std sqrt(5)
    np.testing.assert_allclose(normalize(image, "zscore").data, (image.data - 4) / np.sqrt(5), rtol=1e-6)
    with pytest.raises(InputError, match="mode 'max'"):
        normalize(image, "max")
    with pytest.raises(InputError, match="constant"):
        normalize(image.with_data(np.ones((2, 2), np.float32)))


# ---------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    ("axis", "index", "position"), [(0, 3, 3), (1, "middle", 3), (2, 1.0, 4), (2, 0.5, 2), (0, 0.0, 0)]
)
def test_extract_slice(axis: int, index: int | float | str, position: int) -> None:
    image = ramp_image()
    plane = extract_slice(image, axis, index)
    assert plane.ndim == 2
    assert plane.shape == tuple(n for a, n in enumerate(image.shape) if a != axis)
    assert plane.spacing == tuple(s for a, s in enumerate(image.spacing) if a != axis)
    np.testing.assert_array_equal(plane.data, np.take(image.data, position, axis=axis))
    np.testing.assert_array_equal(plane.affine[:3, 3], 0)
    assert np.count_nonzero(plane.affine[:3, :3] - np.diag(np.diag(plane.affine[:3, :3]))) == 0


def test_extract_slice_errors() -> None:
    image = ramp_image()
    with pytest.raises(InputError, match="index 5 is outside \\[0, 4\\]"):
        extract_slice(image, 2, 5)
    with pytest.raises(InputError, match="fraction 1.5"):
        extract_slice(image, 2, 1.5)
    with pytest.raises(InputError, match="axis 3"):
        extract_slice(image, 3, 0)
    with pytest.raises(InputError, match="2D"):
        extract_slice(extract_slice(image, 2, 0), 0, 0)


@pytest.mark.parametrize(
    ("kwargs", "shape", "spacing"),
    [
        ({"spacing": 1.0}, (16, 6, 15), (1.0, 1.0, 1.0)),
        ({"spacing": [4.0, 2.0, 3.0]}, (4, 3, 5), (4.0, 2.0, 3.0)),
        ({"shape": [4, 12, 5]}, (4, 12, 5), (4.0, 0.5, 3.0)),
        ({"scale": 0.5}, (4, 3, 2), (4.0, 2.0, 7.5)),
    ],
)
def test_resample_grid_keeps_physical_extent(kwargs: dict, shape: tuple[int, ...], spacing: tuple[float, ...]) -> None:
    image = ramp_image()  # 8x6x5 voxels of 2x1x3 mm: extent 16 x 6 x 15 mm
    out = resample(image, **kwargs)
    assert out.shape == shape
    assert out.spacing == pytest.approx(spacing)
    # the outer corner (voxel -1/2, -1/2, -1/2) stays at the same physical point
    corner = np.array([-0.5, -0.5, -0.5, 1.0])
    np.testing.assert_allclose(out.affine @ corner, image.affine @ corner, atol=1e-9)
    assert np.allclose(out.affine[:3, :3] / out.spacing, image.affine[:3, :3] / image.spacing)


def test_resample_linear_reproduces_a_linear_ramp_inside() -> None:
    image = ramp_image()
    out = resample(image, spacing=1.0)
    expected = ramp_image(out.shape, out.affine).data
    inside = (slice(1, -1),) * 3  # new voxel centres beyond the outer old centres are clamped
    np.testing.assert_allclose(out.data[inside], expected[inside], atol=1e-4)
    assert out.data.dtype == np.float32
    cubic = resample(image, spacing=1.0, interpolation="cubic")
    assert cubic.shape == out.shape and cubic.data.dtype == np.float32


def test_resample_labels_keeps_only_existing_labels() -> None:
    labels = block_labels()
    for kwargs in ({"spacing": 0.7}, {"scale": 0.5}, {"shape": [5, 9, 3]}):
        out = resample(labels, **kwargs)
        assert out.data.dtype == np.int32
        assert set(np.unique(out.data)) == {0, 3, 7}
    up = resample(labels, scale=2)
    np.testing.assert_array_equal(up.data[::2, ::2, ::2], labels.data)
    with pytest.raises(InputError, match="only 'nearest'"):
        resample(labels, scale=2, interpolation="linear")


def test_resample_argument_errors() -> None:
    image = ramp_image()
    with pytest.raises(InputError, match="exactly one"):
        resample(image)
    with pytest.raises(InputError, match="exactly one"):
        resample(image, spacing=1, scale=2)
    with pytest.raises(InputError, match="spacing \\[1, 2\\] must be"):
        resample(image, spacing=[1, 2])
    with pytest.raises(InputError, match="scale -1"):
        resample(image, scale=-1)
    with pytest.raises(InputError, match="interpolation 'bicubic'"):
        resample(image, scale=2, interpolation="bicubic")


def test_resample_to_a_shifted_reference_grid() -> None:
    labels = block_labels()
    shifted = AFFINE_LPI.copy()
    shifted[:3, 3] += AFFINE_LPI[:3, 0]  # reference voxel (i, j, k) = labels voxel (i + 1, j, k)
    reference = Image(np.zeros((8, 6, 5), np.float32), shifted)
    out = resample_to(labels, reference)
    assert out.same_grid(reference) and out.data.dtype == np.int32
    np.testing.assert_array_equal(out.data[:-1], labels.data[1:])
    np.testing.assert_array_equal(out.data[-1], 0)
    ramp = resample_to(ramp_image(), reference)
    np.testing.assert_allclose(ramp.data[:-1], ramp_image(affine=shifted).data[:-1], atol=1e-4)
    with pytest.raises(InputError, match="is 2D but the reference is 3D"):
        resample_to(extract_slice(labels, 2, 0), reference)


def test_resample_2d() -> None:
    plane = extract_slice(ramp_image(), 2, 0)
    out = resample(plane, spacing=0.5)
    assert out.shape == (32, 12) and out.spacing == pytest.approx((0.5, 0.5))


def test_reorient_matches_nibabel_canonical_and_keeps_physical_values() -> None:
    image = ramp_image()
    out = reorient(image)
    canonical = nib.as_closest_canonical(nib.Nifti1Image(image.data, image.affine))
    np.testing.assert_allclose(out.affine, canonical.affine)
    np.testing.assert_array_equal(out.data, np.asarray(canonical.dataobj))
    assert nib.aff2axcodes(out.affine) == ("R", "A", "S")
    # the value is a function of the physical position, so it must match the ramp on the new grid
    np.testing.assert_allclose(out.data, ramp_image(out.shape, out.affine).data, atol=1e-4)
    with pytest.raises(InputError, match="'LPS'"):
        reorient(image, "LPS")


def test_reorient_2d_flips_in_plane() -> None:
    affine = np.diag([-1.5, 2.0, 1.0, 1.0])
    plane = Image(np.arange(12, dtype=np.float32).reshape(3, 4), affine)
    out = reorient(plane)
    np.testing.assert_array_equal(out.data, plane.data[::-1])
    np.testing.assert_allclose(out.affine @ [0, 0, 0, 1], affine @ [2, 0, 0, 1])
    assert out.affine[0, 0] == 1.5


# ------------------------------------------------------------------------------- steps


def test_run_steps_moves_labels_with_geometry_only() -> None:
    image, labels = ramp_image(), block_labels()
    steps = [
        {"step": "reorient"},
        {"step": "clip", "low": 0, "high": 40},
        {"step": "normalize", "mode": "minmax"},
        {"step": "resample", "spacing": 1.0},
        {"step": "slice", "axis": 2, "index": "middle"},
    ]
    out_image, out_labels = run_steps(image, labels, steps)
    assert out_image.same_grid(out_labels)
    assert out_image.ndim == 2 and out_image.spacing == pytest.approx((1.0, 1.0))
    assert out_image.data.min() >= 0 and out_image.data.max() <= 1
    assert out_labels.data.dtype == np.int32 and set(np.unique(out_labels.data)) <= {0, 3, 7}
    expected_labels = extract_slice(resample(reorient(labels), spacing=1.0), 2, "middle")
    np.testing.assert_array_equal(out_labels.data, expected_labels.data)
    unchanged, none = run_steps(image, None, [])
    assert unchanged is image and none is None


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([{"step": "blur"}], "steps\\[0\\]: unknown step 'blur'; allowed: reorient, clip, normalize, slice, resample"),
        (
            [{"step": "clip", "low": 0}, {"step": "clip", "lo": 1}],
            "steps\\[1\\] \\(clip\\): unknown setting 'lo'; allowed: low, high, percentiles",
        ),
        ([{"step": "resample", "spacing": "big"}], "steps\\[0\\] \\(resample\\): setting 'spacing'"),
        ([{"step": "normalize", "mode": "max"}], "steps\\[0\\] \\(normalize\\): setting 'mode'"),
        ([{"step": "resample", "interpolation": "nearest", "scale": 2}], "setting 'interpolation'"),
        ([{"low": 0}], "steps\\[0\\]: must be a mapping with a 'step' key"),
        ([{"step": "slice", "index": 99}], "steps\\[0\\]: slice: index 99 is outside"),
    ],
)
def test_run_steps_errors_name_the_step_and_key(steps: list[dict], message: str) -> None:
    with pytest.raises(InputError, match=message):
        run_steps(ramp_image(), None, steps)


def test_run_steps_rejects_labels_on_another_grid() -> None:
    with pytest.raises(InputError, match="not on the grid"):
        run_steps(ramp_image(), block_labels(affine=np.eye(4)), [])


def test_step_registry_resolves_settings_with_their_defaults() -> None:
    assert set(STEPS) == {"reorient", "clip", "normalize", "slice", "resample", "crop_pad", "lung_mask", "affine_align"}
    resolved = validate_steps([{"step": "slice", "axis": 1, "index": 0.25}, {"step": "resample", "spacing": [1, 2, 3]},
                               {"step": "slice"}, {"step": "slice", "index": 1}, {"step": "slice", "index": 1.0}])
    assert resolved[0] == {"axis": 1, "index": 0.25}
    assert resolved[1] == {"spacing": (1.0, 2.0, 3.0), "shape": None, "scale": None, "interpolation": None}
    # an int is a voxel index, a float a fraction of the extent, and the default is the middle
    assert [r["index"] for r in resolved[2:]] == ["middle", 1, 1.0] and isinstance(resolved[4]["index"], float)


@pytest.mark.realdata
def test_lung_ct_preset_on_real_data(shared_data: Path) -> None:
    """Clamp HU to [-1000, 0], map to [0, 1], resample to 4 mm: the mask follows and stays binary."""
    folder = shared_data / "lung-ct-small"
    ct = load_image(folder / "3DCT_lung_baseline_small.mha")
    # the mask grid is 2x finer: mask voxel 2i + 1 is CT voxel i
    mask = resample_to(load_image(folder / "3DCT_lung_baseline_mask.mha", kind="labels"), ct)
    fine = load_image(folder / "3DCT_lung_baseline_mask.mha", kind="labels").data
    np.testing.assert_array_equal(mask.data, fine[1::2, 1::2, 1::2])
    steps = [
        {"step": "reorient"},
        {"step": "clip", "low": -1000, "high": 0},
        {"step": "normalize"},
        {"step": "resample", "spacing": 4.0},
    ]
    image, labels = run_steps(ct, mask, steps)
    assert image.spacing == pytest.approx((4.0, 4.0, 4.0))
    assert image.shape == (39, 53, 80)  # round(57 * 2.732 / 4), round(78 * 2.732 / 4), 64 * 5 / 4
    assert image.data.min() == 0.0 and image.data.max() == 1.0
    assert set(np.unique(labels.data)) == {0, 1} and labels.same_grid(image)
    # lungs are air: most of the mask lies on low intensities
    assert np.median(image.data[labels.data == 1]) < 0.3


# ----------------------------------------------------------------------------- crop/pad


def test_crop_pad_window_values_and_affine() -> None:
    image = ramp_image()  # (8, 6, 5)
    # centre (4, 1, 2), shape (4, 5, 3): window starts at round((4, 1, 2) - (1.5, 2, 1)) = (2, -1, 1)
    out = crop_pad(image, (4, 5, 3), (4, 1, 2), pad_value=-7.0)
    assert out.shape == (4, 5, 3)
    np.testing.assert_array_equal(out.data[:, 1:, :], image.data[2:6, 0:4, 1:4])
    assert np.all(out.data[:, 0, :] == -7.0)  # padded row j = -1
    np.testing.assert_allclose(out.affine[:3, 3], AFFINE_LPI[:3, :3] @ [2, -1, 1] + AFFINE_LPI[:3, 3])
    # every voxel keeps its physical position: the ramp value is the sum of its RAS coordinates
    inside = voxel_to_ras(np.argwhere(out.data != -7.0), out.affine).sum(axis=1)
    np.testing.assert_allclose(out.data[out.data != -7.0], inside, rtol=1e-5)
    with pytest.raises(InputError, match="3 positive integers"):
        crop_pad(image, (4, 5), (0, 0, 0))


def test_crop_pad_step_follows_the_foreground_and_moves_labels() -> None:
    data = np.zeros((20, 16), np.float32)
    data[12:16, 3:7] = 5.0  # foreground box, centre (13.5, 4.5)
    image = Image(data, np.diag([2.0, 3.0, 1.0, 1.0]))
    labels = image.with_data((data > 0).astype(np.int32) * 4)
    out, out_labels = run_steps(image, labels, [{"step": "crop_pad", "shape": [6, 10]}])
    assert out.shape == out_labels.shape == (6, 10)
    np.testing.assert_array_equal(foreground_centre(out.data > 0), [2.5, 4.5])  # box centred in the window
    np.testing.assert_array_equal(out_labels.data, (out.data > 0) * 4)  # labels follow, padded with 0
    assert out.data.min() == 0.0 and out_labels.same_grid(out)
    by_labels, _ = run_steps(image, labels, [{"step": "crop_pad", "shape": [4, 4], "foreground": "labels"}])
    assert np.all(by_labels.data == 5.0)
    with pytest.raises(InputError, match="'shape' is a required property"):
        run_steps(image, None, [{"step": "crop_pad"}])
    with pytest.raises(InputError, match="needs a label map"):
        run_steps(image, None, [{"step": "crop_pad", "shape": [4, 4], "foreground": "labels"}])
    with pytest.raises(InputError, match="foreground is empty"):
        run_steps(image, None, [{"step": "crop_pad", "shape": [4, 4], "threshold": 9}])


def test_prepare_subject_carries_the_mask_once_per_step() -> None:
    data = np.zeros((20, 16), np.float32)
    data[12:16, 3:7] = 5.0
    image = Image(data, np.diag([2.0, 3.0, 1.0, 1.0]))
    labels = image.with_data((data > 0).astype(np.int32) * 4)
    mask = image.with_data(np.zeros((20, 16), np.uint8))
    mask.data[1:3, 1:3] = 1  # far from the labels
    prepared = prepare_subject(image, [{"step": "crop_pad", "shape": [6, 10]}], labels=labels, mask=mask)
    assert prepared.mask.same_grid(prepared.image) and prepared.mask.data.sum() == 0  # cropped away, like the image
    with pytest.raises(InputError, match=r"steps\[0\]: crop_pad: the mask would not follow the image"):
        prepare_subject(image, [{"step": "crop_pad", "shape": [4, 4], "foreground": "labels"}], labels=labels, mask=mask)


# ---------------------------------------------------------------------------- landmarks


def test_landmarks_survive_a_resampling_round_trip() -> None:
    image = ramp_image((16, 12, 10))
    points = np.array([[1.0, 2.0, 3.0], [7.25, 5.5, 0.0], [15.0, 11.0, 9.0], [3.3, 0.7, 6.1]])
    coarse = resample(image, spacing=[5.0, 2.5, 4.0])
    back = resample(coarse, shape=image.shape)
    round_trip = map_landmarks(map_landmarks(points, image, coarse), coarse, back)
    error_mm = np.linalg.norm(voxel_to_ras(round_trip, back.affine) - voxel_to_ras(points, image.affine), axis=1)
    assert error_mm.max() < 0.01
    # the resampled ramp at a mapped landmark equals the original ramp at the landmark (linear data)
    index = np.round(map_landmarks(points[:1], image, coarse)).astype(int)[0]
    expected = voxel_to_ras(map_landmarks(index[None].astype(float), coarse, image), image.affine).sum()
    assert coarse.data[tuple(index)] == pytest.approx(expected, abs=1e-3)


@pytest.mark.realdata
def test_real_landmarks_survive_resampling_and_crop(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "lung-ct-small"
    ct = load_image(folder / "3DCT_lung_baseline_small.mha")
    # physical LPS points of the full-resolution scan; keep those inside this CT's field of view
    points_lps = np.loadtxt(folder / "3DCT_lung_baseline_landmarks.txt", skiprows=2)
    points = ras_to_voxel(points_lps * [-1, -1, 1], ct.affine)
    points = points[np.all((points >= 0) & (points <= np.asarray(ct.shape) - 1), axis=1)]
    assert len(points) >= 10
    steps = [{"step": "resample", "spacing": 1.5}, {"step": "crop_pad", "shape": [96, 128, 192], "threshold": -500}]
    out, _ = run_steps(ct, None, steps)
    mapped = map_landmarks(points, ct, out)
    back = map_landmarks(mapped, out, ct)
    assert np.abs(voxel_to_ras(back, ct.affine) - voxel_to_ras(points, ct.affine)).max() < 0.01
    save_landmarks(mapped, out, tmp_path / "points.csv")
    np.testing.assert_allclose(load_landmarks(tmp_path / "points.csv", out), mapped, atol=1e-6)


# ---------------------------------------------------------------------------- CLI


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "registration_core", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def test_cli_preprocess_step_with_labels_and_landmarks(tmp_path: Path) -> None:
    save_image(ramp_image((16, 12, 10)), tmp_path / "image.nii.gz")
    save_image(block_labels((16, 12, 10)), tmp_path / "labels.nii.gz")
    (tmp_path / "points.csv").write_text("i,j,k\n1,2,3\n10.5,4,7\n")
    result = run_cli(
        "preprocess", "resample", "--image", tmp_path / "image.nii.gz", "--labels", tmp_path / "labels.nii.gz",
        "--landmarks", tmp_path / "points.csv", "--out", tmp_path / "out.nii.gz",
        "--out-labels", tmp_path / "out_labels.nii.gz", "--out-landmarks", tmp_path / "out.csv",
        "--set", "spacing=[4, 2, 6]",
    )
    assert result.returncode == 0, result.stderr
    out, out_labels = load_image(tmp_path / "out.nii.gz"), load_image(tmp_path / "out_labels.nii.gz", "labels")
    assert out.shape == out_labels.shape == (8, 6, 5) and out.spacing == pytest.approx((4, 2, 6))
    assert set(np.unique(out_labels.data)) <= {0, 3, 7}
    mapped = load_landmarks(tmp_path / "out.csv", out)
    np.testing.assert_allclose(voxel_to_ras(mapped, out.affine), voxel_to_ras([[1, 2, 3], [10.5, 4, 7]], AFFINE_LPI))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "--image", "IMAGE", "--out", "OUT"], "unknown step 'nope'; allowed: reorient,"),
        (["crop-pad", "--image", "IMAGE", "--out", "OUT", "--set", "shape=[4, x]"], "setting 'shape'"),
        (["resample", "--image", "IMAGE", "--out", "OUT", "--set", "spacing"], "not of the form key=value"),
        (["clip", "--image", "IMAGE", "--labels", "IMAGE", "--out", "OUT"], "--labels and --out-labels"),
        (["clip", "--image", "IMAGE", "--mask", "IMAGE", "--out", "OUT"], "--mask and --out-mask"),
        (["clip", "--image", "IMAGE", "--reference", "IMAGE", "--out", "OUT"], "option of affine-align only"),
        (["affine-align", "--image", "IMAGE", "--out", "OUT"], "--reference is required"),
        (["affine-align", "--image", "IMAGE", "--reference", "IMAGE", "--out", "OUT", "--set", "bins=2"], "'bins'"),
    ],
)
def test_cli_preprocess_errors(tmp_path: Path, args: list[str], message: str) -> None:
    save_image(ramp_image(), tmp_path / "image.nii.gz")
    paths = {"IMAGE": str(tmp_path / "image.nii.gz"), "OUT": str(tmp_path / "out.nii.gz")}
    result = run_cli("preprocess", *[paths.get(arg, arg) for arg in args])
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert not (tmp_path / "out.nii.gz").exists()
