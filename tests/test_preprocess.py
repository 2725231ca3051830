"""Tests of registration_core.preprocess: intensity and geometric steps, the step runner."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import nibabel as nib
import numpy as np
import pytest

from registration_core.errors import InputError
from registration_core.io import Image, load_image
from registration_core.preprocess import (
    STEP_SCHEMAS,
    clip_intensity,
    extract_slice,
    normalize,
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


def test_step_schemas_are_valid_json_schemas() -> None:
    assert set(STEP_SCHEMAS) == {"reorient", "clip", "normalize", "slice", "resample"}
    for schema in STEP_SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["additionalProperties"] is False
    validate_steps([{"step": "slice", "axis": 1, "index": 0.25}, {"step": "resample", "spacing": [1, 2, 3]}])


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
