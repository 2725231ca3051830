"""Tests of registration_core.core.io: images, labels, landmarks, displacement fields."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from registration_core.core.io import (
    Image,
    atomic_path,
    image_from_sitk,
    image_to_sitk,
    load_displacement,
    load_image,
    load_itk_displacement_transform,
    load_landmarks,
    save_displacement,
    save_image,
    save_landmarks,
)
from registration_core.errors import InputError

SUFFIXES = [".nii", ".nii.gz", ".mha", ".mhd", ".nrrd"]

# voxel -> RAS: axis i along -x (2 mm), j along +z (3 mm), k along +y (1.5 mm): a permuted, flipped grid
AFFINE_3D = np.array(
    [
        [-2.0, 0.0, 0.0, 40.0],
        [0.0, 0.0, 1.5, -20.0],
        [0.0, 3.0, 0.0, 7.5],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
AFFINE_2D = np.array([[0.8, 0, 0, -5.0], [0, 1.25, 0, 12.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])


def make_image(ndim: int, labels: bool = False) -> Image:
    """A small seeded random image (or label map with labels 0..3) on a non-trivial grid."""
    rng = np.random.default_rng(ndim)
    shape = (6, 5, 4)[:ndim]
    data = rng.integers(0, 4, shape).astype(np.int32) if labels else rng.normal(size=shape).astype(np.float32)
    return Image(data=data, affine=AFFINE_3D if ndim == 3 else AFFINE_2D)


# ------------------------------------------------------------------------------ images


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("ndim", [2, 3])
def test_image_round_trip_keeps_data_and_geometry(tmp_path: Path, suffix: str, ndim: int) -> None:
    image = make_image(ndim)
    path = tmp_path / "sub" / f"image{suffix}"
    save_image(image, path)
    loaded = load_image(path)
    assert loaded.ndim == ndim and loaded.data.dtype == np.float32
    np.testing.assert_array_equal(loaded.data, image.data)
    np.testing.assert_allclose(loaded.affine, image.affine, atol=1e-5)
    assert loaded.same_grid(image)
    assert loaded.path == str(path)
    assert [p.name for p in (tmp_path / "sub").iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_labels_round_trip_keeps_integer_dtype(tmp_path: Path, suffix: str) -> None:
    labels = make_image(3, labels=True)
    path = tmp_path / f"labels{suffix}"
    save_image(labels, path)
    loaded = load_image(path, kind="labels")
    assert loaded.data.dtype == np.int32
    np.testing.assert_array_equal(loaded.data, labels.data)
    if suffix in (".nii", ".nii.gz"):
        assert np.issubdtype(nib.load(path).get_data_dtype(), np.integer)
    else:
        assert sitk.ReadImage(str(path)).GetPixelID() == sitk.sitkInt32


def test_image_properties() -> None:
    image = make_image(3)
    assert image.shape == (6, 5, 4)
    assert image.spacing == pytest.approx((2.0, 3.0, 1.5))
    assert make_image(2).spacing == pytest.approx((0.8, 1.25))
    copy = image.with_data(np.zeros(image.shape, np.float32))
    assert copy.same_grid(image) and copy.path is None
    nudged = Image(image.data, image.affine + 1e-6)
    assert nudged.same_grid(image)
    moved = Image(image.data, image.affine.copy())
    moved.affine[0, 3] += 0.01
    assert not moved.same_grid(image)
    with pytest.raises(ValueError, match="shape"):
        image.with_data(np.zeros((2, 2, 2)))


def test_itk_geometry_converts_lps_to_ras(tmp_path: Path) -> None:
    """An .mha with origin (10, 20, 30) LPS, spacing (1, 2, 3) and a 90 degree rotation about z."""
    itk_image = sitk.GetImageFromArray(np.arange(24, dtype=np.float32).reshape(4, 3, 2))  # array (z, y, x)
    itk_image.SetOrigin((10.0, 20.0, 30.0))
    itk_image.SetSpacing((1.0, 2.0, 3.0))
    itk_image.SetDirection((0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(itk_image, str(tmp_path / "rot.mha"))
    image = load_image(tmp_path / "rot.mha")
    assert image.shape == (2, 3, 4)  # (i, j, k) = ITK (x, y, z)
    assert image.data[1, 2, 3] == sitk.GetArrayFromImage(itk_image)[3, 2, 1]
    # hand-computed: LPS columns D @ diag(s) = [[0,-2,0],[1,0,0],[0,0,3]], then negate rows x and y
    expected = np.array([[0, 2, 0, -10], [-1, 0, 0, -20], [0, 0, 3, 30], [0, 0, 0, 1.0]])
    np.testing.assert_allclose(image.affine, expected)
    lps = np.array(itk_image.TransformIndexToPhysicalPoint((1, 2, 3)))
    np.testing.assert_allclose(image.affine @ [1, 2, 3, 1], [-lps[0], -lps[1], lps[2], 1])
    back = image_to_sitk(image)
    assert back.GetOrigin() == pytest.approx(itk_image.GetOrigin())
    assert back.GetDirection() == pytest.approx(itk_image.GetDirection())


def test_nifti_written_by_us_is_read_identically_by_itk(tmp_path: Path) -> None:
    image = make_image(3)
    save_image(image, tmp_path / "image.nii.gz")
    from_itk = image_from_sitk(sitk.ReadImage(str(tmp_path / "image.nii.gz")))
    np.testing.assert_allclose(from_itk.affine, image.affine, atol=1e-5)
    np.testing.assert_array_equal(from_itk.data, image.data)


def test_trailing_singleton_axis_is_squeezed(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(7, 9, 1)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "slice.nii.gz")
    image = load_image(tmp_path / "slice.nii.gz")
    assert image.shape == (7, 9) and image.affine.shape == (4, 4)


def _write_nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


BAD_IMAGES = {
    "missing": lambda d: d / "absent.nii.gz",
    "text_as_nifti": lambda d: (d / "notes.nii.gz").write_text("not an image") and d / "notes.nii.gz",
    "text_as_mha": lambda d: (d / "notes.mha").write_text("not an image") and d / "notes.mha",
    "truncated": lambda d: _truncated(d),
    "4d": lambda d: _write_nifti(d / "four.nii.gz", np.ones((3, 3, 3, 2), np.float32)),
    "1d": lambda d: _write_nifti(d / "line.nii.gz", np.arange(5, dtype=np.float32)),
    "nan": lambda d: _write_nifti(d / "nan.nii.gz", np.array([[[np.nan, 1.0], [2.0, 3.0]]] * 2, np.float32)),
    "inf": lambda d: _write_nifti(d / "inf.nii.gz", np.array([[[np.inf, 1.0], [2.0, 3.0]]] * 2, np.float32)),
    "constant": lambda d: _write_nifti(d / "flat.nii.gz", np.full((3, 3, 3), 7.0, np.float32)),
    "suffix": lambda d: (d / "image.png").write_bytes(b"x") and d / "image.png",
}


def _truncated(folder: Path) -> Path:
    full = _write_nifti(folder / "full.nii.gz", np.random.default_rng(1).normal(size=(20, 20, 20)).astype(np.float32))
    cut = folder / "cut.nii.gz"
    cut.write_bytes(gzip.compress(gzip.decompress(full.read_bytes())[:1000]))
    return cut


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_raises_input_error_naming_the_file(tmp_path: Path, case: str) -> None:
    path = BAD_IMAGES[case](tmp_path)
    with pytest.raises(InputError, match=path.name):
        load_image(path)


def test_vector_mha_is_not_an_image(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 4, 5, 3)), isVector=True), str(tmp_path / "vec.mha"))
    with pytest.raises(InputError, match="vec.mha.*components"):
        load_image(tmp_path / "vec.mha")


def test_labels_reject_non_integer_values(tmp_path: Path) -> None:
    path = _write_nifti(tmp_path / "seg.nii.gz", np.array([[[0.0, 1.5], [2.0, 3.0]]] * 2, np.float32))
    with pytest.raises(InputError, match="seg.nii.gz.*non-integer.*1.5"):
        load_image(path, kind="labels")


def test_labels_accept_integral_floats_and_constant_maps(tmp_path: Path) -> None:
    path = _write_nifti(tmp_path / "seg.nii.gz", np.array([[[0.0, 1.0], [2.0, 3.0]]] * 2, np.float32))
    assert load_image(path, kind="labels").data.dtype == np.int32
    empty = _write_nifti(tmp_path / "empty.nii.gz", np.zeros((2, 2, 2), np.int16))
    assert load_image(empty, kind="labels").data.max() == 0


def test_atomic_path_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "new" / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("{}")
            raise RuntimeError("boom")
    assert list((tmp_path / "new").iterdir()) == []
    with atomic_path(target) as tmp:
        assert tmp.name == "out.json" and tmp.parent != target.parent
        tmp.write_text("{}")
    assert target.read_text() == "{}"
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["out.json"]


# --------------------------------------------------------------------------- landmarks


def test_elastix_point_and_index_files_on_a_synthetic_grid(tmp_path: Path) -> None:
    reference = make_image(3)
    points_vox = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [5.0, 4.5, 0.25]])
    ras = (reference.affine @ np.c_[points_vox, np.ones(3)].T).T[:, :3]
    lps = ras * [-1, -1, 1]
    (tmp_path / "p.txt").write_text("point\n3\n" + "\n".join(" ".join(map(str, p)) for p in lps) + "\n")
    np.testing.assert_allclose(load_landmarks(tmp_path / "p.txt", reference), points_vox, atol=1e-9)
    (tmp_path / "i.txt").write_text("index\n3\n1 2 3\n0 0 0\n5 4.5 0.25\n")
    np.testing.assert_allclose(load_landmarks(tmp_path / "i.txt", reference), points_vox)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("points\n1\n1 2 3\n", "line 1.*'point' or 'index'"),
        ("index\nthree\n1 2 3\n", "line 2.*number of points"),
        ("index\n2\n1 2 3\n", "declares 2 points but lists 1"),
        ("index\n2\n1 2 3\n1 2\n", "line 4 has 2 values; expected 3"),
        ("index\n1\n1 2 x\n", "line 3 is not numeric"),
        ("index\n1\n1 2 9\n", "point 1 at voxel \\[1.0, 2.0, 9.0\\] is outside"),
        ("index\n0\n", "no points"),
        ("index\n", "count line"),
    ],
)
def test_malformed_elastix_files_name_path_and_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad.txt").write_text(text)
    with pytest.raises(InputError, match=f"bad.txt: .*{message}"):
        load_landmarks(tmp_path / "bad.txt", make_image(3))


def test_landmark_csv_round_trip_and_physical_columns(tmp_path: Path) -> None:
    reference = make_image(3)
    points_vox = np.array([[1.0, 2.0, 3.0], [0.5, 4.0, 0.0]])
    save_landmarks(points_vox, reference, tmp_path / "lm.csv")
    header = (tmp_path / "lm.csv").read_text().splitlines()[0]
    assert header == "i,j,k,x,y,z"
    np.testing.assert_allclose(load_landmarks(tmp_path / "lm.csv", reference), points_vox)
    # x, y, z only: voxel (1, 2, 3) -> RAS (-2*1 + 40, 1.5*3 - 20, 3*2 + 7.5) by hand
    (tmp_path / "xyz.csv").write_text("id,x,y,z\nA,38,-15.5,13.5\n")
    np.testing.assert_allclose(load_landmarks(tmp_path / "xyz.csv", reference), [[1.0, 2.0, 3.0]])


def test_landmark_csv_2d_and_errors(tmp_path: Path) -> None:
    reference = make_image(2)
    (tmp_path / "lm.csv").write_text("x,y\n-4.2,13.25\n")
    np.testing.assert_allclose(load_landmarks(tmp_path / "lm.csv", reference), [[1.0, 1.0]])
    (tmp_path / "cols.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="cols.csv: needs columns i,j .* or x,y"):
        load_landmarks(tmp_path / "cols.csv", reference)
    (tmp_path / "nan.csv").write_text("i,j\n1,2\n1,oops\n")
    with pytest.raises(InputError, match="nan.csv: line 3"):
        load_landmarks(tmp_path / "nan.csv", reference)
    with pytest.raises(InputError, match="absent.csv: file not found"):
        load_landmarks(tmp_path / "absent.csv", reference)


@pytest.mark.realdata
def test_elastix_point_files_on_lung_ct(shared_data: Path) -> None:
    """Point files of lung-ct-small: physical points land on integer voxels of the mask grid."""
    folder = shared_data / "lung-ct-small"
    mask = load_image(folder / "3DCT_lung_baseline_mask.mha", kind="labels")
    ct = load_image(folder / "3DCT_lung_baseline_small.mha")
    physical = load_landmarks(folder / "CT_3D_lung_fixed_point_set_corrected.txt", mask)
    assert physical.shape == (51, 3)
    np.testing.assert_allclose(physical[0], [86.0, 83.0, 92.0], atol=1e-6)
    itk_mask = sitk.ReadImage(str(folder / "3DCT_lung_baseline_mask.mha"))
    lps = np.loadtxt(folder / "CT_3D_lung_fixed_point_set_corrected.txt", skiprows=2)
    expected = [itk_mask.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in lps]
    np.testing.assert_allclose(physical, expected, atol=1e-6)
    # the same physical points in the 2x coarser CT grid
    itk_ct = sitk.ReadImage(str(folder / "3DCT_lung_baseline_small.mha"))
    expected_ct = [itk_ct.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in lps]
    in_ct = load_landmarks(folder / "CT_3D_lung_fixed_point_set_corrected.txt", ct)
    np.testing.assert_allclose(in_ct, expected_ct, atol=1e-6)
    index = load_landmarks(folder / "3DCT_lung_baseline.txt", mask)
    assert index.shape == (10, 3)
    np.testing.assert_array_equal(index[0], [94, 92, 114])
    # the index file refers to the full-resolution (mask) grid: k = 114 is outside the 64-slice CT
    with pytest.raises(InputError, match="3DCT_lung_baseline.txt: point 1 .* outside"):
        load_landmarks(folder / "3DCT_lung_baseline.txt", ct)


# ------------------------------------------------------------------ displacement fields


def test_displacement_written_is_itk_mm_lps(tmp_path: Path) -> None:
    reference = make_image(3)
    disp_vox = np.zeros((3, *reference.shape), np.float32)
    disp_vox[:, 1, 2, 3] = [1.0, -2.0, 0.5]
    save_displacement(disp_vox, reference, tmp_path / "displacement.nii.gz")
    field = sitk.ReadImage(str(tmp_path / "displacement.nii.gz"))
    assert field.GetNumberOfComponentsPerPixel() == 3 and field.GetSize() == reference.shape
    vector = np.array(field[1, 2, 3])
    # RAS mm = A @ u = (-2*1, 1.5*0.5, 3*-2) = (-2, 0.75, -6); LPS negates x and y
    np.testing.assert_allclose(vector, [2.0, -0.75, -6.0], atol=1e-6)
    assert np.count_nonzero(sitk.GetArrayFromImage(field)) == 3
    field_grid = image_from_sitk(sitk.VectorIndexSelectionCast(field, 0))
    np.testing.assert_allclose(field_grid.affine, reference.affine, atol=1e-5)
    np.testing.assert_array_equal(load_displacement(tmp_path / "displacement.nii.gz", reference), disp_vox)


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_displacement_round_trip_and_itk_transform(tmp_path: Path, suffix: str, ndim: int) -> None:
    reference = make_image(ndim)
    disp_vox = np.random.default_rng(3).normal(size=(ndim, *reference.shape)).astype(np.float32)
    path = tmp_path / f"d{suffix}"
    save_displacement(disp_vox, reference, path)
    np.testing.assert_allclose(load_displacement(path, reference), disp_vox, atol=1e-5)
    transform = load_itk_displacement_transform(path, reference)
    itk_reference = image_to_sitk(reference)
    index = (1, 2, 3)[:ndim]
    moved = transform.TransformPoint(itk_reference.TransformIndexToPhysicalPoint(index))
    expected = np.array(index) + disp_vox[(slice(None), *index)]
    np.testing.assert_allclose(itk_reference.TransformPhysicalPointToContinuousIndex(moved), expected, atol=1e-4)


def test_displacement_errors(tmp_path: Path) -> None:
    reference = make_image(3)
    with pytest.raises(InputError, match="expected \\(3, 6, 5, 4\\)"):
        save_displacement(np.zeros((3, 6, 5, 5)), reference, tmp_path / "d.nii.gz")
    save_displacement(np.zeros((3, *reference.shape)), reference, tmp_path / "d.nii.gz")
    other = Image(reference.data, reference.affine @ np.diag([2.0, 1, 1, 1]))
    with pytest.raises(InputError, match="d.nii.gz: its grid differs .*: spacing"):
        load_displacement(tmp_path / "d.nii.gz", other)
    with pytest.raises(InputError, match="d.nii.gz: is a 3D field with 3 components; expected 2D"):
        load_displacement(tmp_path / "d.nii.gz", make_image(2))
    save_image(reference, tmp_path / "scalar.nii.gz")
    with pytest.raises(InputError, match="scalar.nii.gz: .* 1 components"):
        load_displacement(tmp_path / "scalar.nii.gz", reference)
    with pytest.raises(InputError, match="absent.nii.gz: file not found"):
        load_displacement(tmp_path / "absent.nii.gz", reference)
