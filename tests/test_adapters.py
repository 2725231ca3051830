"""Tests of the dataset adapters (registration_core.datasets.build_manifest) and the imports.

Every adapter runs on small files written here in the dataset's real format: DIR-Lab raw int16
volumes and landmark text, a Learn2Reg dataset JSON with NIfTI and keypoint CSVs, FIRE JPEGs and
control points, the neurite-oasis folder layout, elastix point files through the folder adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from registration_core import datasets
from registration_core.cli import main
from registration_core.datasets import LandmarkImport, RawImport, SubjectFiles, build_manifest
from registration_core.errors import InputError
from registration_core.io import load_image, load_landmarks


def write_nifti(path: Path, shape: tuple[int, ...], labels: bool = False, seed: int = 0) -> Path:
    """A small random image (float32) or label map (int16, values 0..3) with 1 mm identity affine."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 4, shape).astype(np.int16) if labels else rng.random(shape, dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def manifest(adapter: str, root: Path, **keys) -> datasets.Manifest:
    return build_manifest(adapter, {"adapter": adapter, "path": str(root), **keys}, Path("."), "datasets.d")


# --------------------------------------------------------------------------------- folder


def test_folder_adapter_with_elastix_landmarks_and_pairs(tmp_path: Path) -> None:
    for subject in ("s1", "s2"):
        write_nifti(tmp_path / subject / "t1.nii.gz", (6, 7, 8))
        write_nifti(tmp_path / subject / "seg.nii.gz", (6, 7, 8), labels=True)
        (tmp_path / subject / "points.txt").write_text("index\n2\n1 2 3\n4.5 5 6\n")
    result = manifest(
        "folder", tmp_path, image="{subject}/t1.nii.gz", labels="{subject}/seg.nii.gz",
        landmarks="{subject}/points.txt", pairs=[["s1", "s2"]],
    )
    assert result.subjects == ("s1", "s2")
    assert result.pairs == (("s1", "s2"),)
    assert result.files["s2"] == SubjectFiles(
        image=str(tmp_path / "s2/t1.nii.gz"), labels=str(tmp_path / "s2/seg.nii.gz"),
        landmarks=str(tmp_path / "s2/points.txt"),
    )
    assert result.raw_imports == {} and result.landmark_imports == {}
    # elastix index points are read as they are by io.load_landmarks
    reference = load_image(result.files["s1"].image)
    np.testing.assert_allclose(load_landmarks(result.files["s1"].landmarks, reference), [[1, 2, 3], [4.5, 5, 6]])


def test_folder_relative_path_and_errors(tmp_path: Path) -> None:
    write_nifti(tmp_path / "data" / "a_T1.nii.gz", (4, 5))
    spec = {"adapter": "folder", "path": "data", "image": "{subject}_T1.nii.gz"}
    result = build_manifest("folder", spec, tmp_path, "datasets.d")
    assert result.subjects == ("a",) and result.files["a"].image == str(tmp_path / "data/a_T1.nii.gz")
    assert result.pairs is None
    with pytest.raises(InputError, match=r"config key datasets.d.path: folder .*nowhere not found"):
        build_manifest("folder", {**spec, "path": "nowhere"}, tmp_path, "datasets.d")
    with pytest.raises(InputError, match=r"config key datasets.d.image: is required"):
        build_manifest("folder", {"path": "data"}, tmp_path, "datasets.d")
    with pytest.raises(InputError, match=r"config key datasets.d: .*labels file .*a_seg.nii.gz not found"):
        build_manifest("folder", {**spec, "labels": "{subject}_seg.nii.gz"}, tmp_path, "datasets.d")
    with pytest.raises(InputError, match=r"config key datasets.d.pairs\[0\]: subject 'b' is not in the dataset"):
        build_manifest("folder", {**spec, "pairs": [["a", "b"]]}, tmp_path, "datasets.d")
    with pytest.raises(InputError, match=r"config key datasets.d.pairs\[0\]: .*two subjects"):
        build_manifest("folder", {**spec, "pairs": [["a", "a"]]}, tmp_path, "datasets.d")
    with pytest.raises(InputError, match=r"config key datasets.d.adapter: 'nifti' is not allowed; allowed: folder"):
        build_manifest("nifti", spec, tmp_path, "datasets.d")


# --------------------------------------------------------------------------- neurite-oasis


@pytest.fixture()
def oasis_root(tmp_path: Path) -> Path:
    for number in (1, 2, 3):
        folder = tmp_path / f"OASIS_OAS1_{number:04d}_MR1"
        write_nifti(folder / "slice_norm.nii.gz", (8, 9, 1), seed=number)
        write_nifti(folder / "slice_seg24.nii.gz", (8, 9, 1), labels=True)
        if number != 3:  # subject 3 has the 2D slice only
            write_nifti(folder / "aligned_norm.nii.gz", (8, 9, 10), seed=number)
            write_nifti(folder / "aligned_seg35.nii.gz", (8, 9, 10), labels=True)
    (tmp_path / "README").write_text("not a subject")
    return tmp_path


def test_neurite_oasis_variants(oasis_root: Path) -> None:
    result = manifest("neurite-oasis", oasis_root)
    assert result.subjects == ("OAS1_0001", "OAS1_0002")
    assert result.files["OAS1_0002"] == SubjectFiles(
        image=str(oasis_root / "OASIS_OAS1_0002_MR1/aligned_norm.nii.gz"),
        labels=str(oasis_root / "OASIS_OAS1_0002_MR1/aligned_seg35.nii.gz"),
    )
    flat = manifest("neurite-oasis", oasis_root, variant="2d")
    assert flat.subjects == ("OAS1_0001", "OAS1_0002", "OAS1_0003")
    assert flat.files["OAS1_0003"].labels.endswith("OASIS_OAS1_0003_MR1/slice_seg24.nii.gz")
    assert load_image(flat.files["OAS1_0003"].image).shape == (8, 9)  # the slice is read as 2D
    assert manifest("neurite-oasis", oasis_root, variant="2d", limit=2).subjects == ("OAS1_0001", "OAS1_0002")
    listed = manifest("neurite-oasis", oasis_root, subjects=["OASIS_OAS1_0002_MR1", "OAS1_0001"])
    assert listed.subjects == ("OAS1_0002", "OAS1_0001")


def test_neurite_oasis_errors(oasis_root: Path) -> None:
    with pytest.raises(InputError, match=r"config key datasets.d.variant: '4d' is not allowed; allowed: 3d, 2d"):
        manifest("neurite-oasis", oasis_root, variant="4d")
    with pytest.raises(InputError, match=r"subject 'OAS1_0003': image file .*aligned_norm.nii.gz not found"):
        manifest("neurite-oasis", oasis_root, subjects=["OAS1_0003"])
    with pytest.raises(InputError, match=r"config key datasets.d.limit: 0 is not allowed"):
        manifest("neurite-oasis", oasis_root, limit=0)
    (oasis_root / "OASIS_OAS1_0002_MR1/aligned_seg35.nii.gz").unlink()
    with pytest.raises(InputError, match=r"labels file .*OAS1_0002_MR1/aligned_seg35.nii.gz not found"):
        manifest("neurite-oasis", oasis_root)
