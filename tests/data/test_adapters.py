"""Tests of the dataset adapters (registration_core.data.adapters.build_manifest) and the imports
(registration_core.data.imports).

Every adapter runs on small files written here in the dataset's real format: DIR-Lab raw int16
volumes and landmark text, a Learn2Reg dataset JSON with NIfTI and keypoint CSVs, FIRE JPEGs and
control points, the neurite-oasis folder layout, elastix point files through the folder adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from registration_core.cli import main
from registration_core.core.io import load_image, load_landmarks
from registration_core.data import imports
from registration_core.data.adapters import Manifest, SubjectFiles, build_manifest, dirlab
from registration_core.data.imports import LandmarkImport, RawImport
from registration_core.errors import InputError


def write_nifti(path: Path, shape: tuple[int, ...], labels: bool = False, seed: int = 0) -> Path:
    """A small random image (float32) or label map (int16, values 0..3) with 1 mm identity affine."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 4, shape).astype(np.int16) if labels else rng.random(shape, dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def manifest(adapter: str, root: Path, **keys) -> Manifest:
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


# --------------------------------------------------------------------------------- DIR-Lab

CASE1_SHAPE = (256, 256, 94)  # published geometry of case 1: 0.97 x 0.97 x 2.5 mm
MARKED_VOXEL = (10, 20, 30)  # (i, j, k) = (column, row, slice), 0-based
MARKED_STORED = 1234  # stored value = HU + 1024


def write_dirlab_case1(root: Path) -> Path:
    """Case1Pack as published: Images/case1_T{00,50}_s.img (little-endian int16, column fastest)
    and ExtremePhases/Case1_300_T{00,50}_xyz.txt (1-based x y z)."""
    images, points = root / "Case1Pack" / "Images", root / "Case1Pack" / "ExtremePhases"
    images.mkdir(parents=True)
    points.mkdir(parents=True)
    for phase, shift in (("T00", 0), ("T50", 2)):
        volume = np.zeros(CASE1_SHAPE[::-1], dtype="<i2")  # (slices, rows, columns): C order, column fastest
        i, j, k = MARKED_VOXEL
        volume[k + shift, j, i] = MARKED_STORED  # the exhale phase is shifted by 2 slices
        volume.tofile(images / f"case1_{phase}_s.img")
        x, y, z = i + 1, j + 1, k + shift + 1
        (points / f"Case1_300_{phase}_xyz.txt").write_text(f"{x}\t{y}\t{z}\n1\t1\t1\n")
    return root


def test_dirlab_manifest(tmp_path: Path) -> None:
    root = write_dirlab_case1(tmp_path)
    result = manifest("dirlab", root)
    assert result.subjects == ("case1-T00", "case1-T50")
    assert result.pairs == (("case1-T00", "case1-T50"),)
    raw = result.raw_imports["case1-T50"]
    assert raw == RawImport(
        str(root / "Case1Pack/Images/case1_T50_s.img"), CASE1_SHAPE, (0.97, 0.97, 2.5), "<i2", "LPI", -1024.0
    )
    assert result.files["case1-T50"].image == raw.raw
    assert result.landmark_imports["case1-T00"] == LandmarkImport(
        str(root / "Case1Pack/ExtremePhases/Case1_300_T00_xyz.txt"), "dirlab-xyz"
    )
    assert result.files["case1-T00"].landmarks == result.landmark_imports["case1-T00"].source
    swapped = manifest("dirlab", root, fixed_phase="T50", cases=[1])
    assert swapped.pairs == (("case1-T50", "case1-T00"),)


def test_dirlab_import_geometry_and_landmarks(tmp_path: Path) -> None:
    """A known stored value at a known index lands at that index with HU = stored - 1024, the
    published spacing, the LPI orientation, and the 1-based landmark on the same voxel."""
    root = write_dirlab_case1(tmp_path / "data")
    result = manifest("dirlab", root)
    out = tmp_path / "out"
    imports.import_raw(result.raw_imports["case1-T00"], out / "image.nii.gz")
    image = load_image(out / "image.nii.gz")
    assert image.shape == CASE1_SHAPE
    np.testing.assert_allclose(image.spacing, (0.97, 0.97, 2.5), atol=1e-6)
    np.testing.assert_allclose(image.affine, np.diag([-0.97, -0.97, -2.5, 1.0]), atol=1e-6)
    assert image.data[MARKED_VOXEL] == MARKED_STORED - 1024
    assert np.count_nonzero(image.data != -1024) == 1
    imports.import_landmarks(result.landmark_imports["case1-T00"], image, out / "landmarks.csv")
    points = load_landmarks(out / "landmarks.csv", image)
    np.testing.assert_array_equal(points, [MARKED_VOXEL, (0, 0, 0)])
    # RAS mm of the marked voxel: columns toward the left (-x), rows posterior (-y), slices inferior (-z)
    ras = np.loadtxt(out / "landmarks.csv", delimiter=",", skiprows=1)[0, 3:]
    np.testing.assert_allclose(ras, [-9.7, -19.4, -75.0], atol=1e-9)


def test_dirlab_import_through_the_cli(tmp_path: Path) -> None:
    root = write_dirlab_case1(tmp_path / "data")
    result = manifest("dirlab", root)
    raw, points = result.raw_imports["case1-T50"], result.landmark_imports["case1-T50"]
    assert main(["import-raw", *raw.cli_args(), "--out", str(tmp_path / "t50.nii.gz")]) == 0
    image = load_image(tmp_path / "t50.nii.gz")
    i, j, k = MARKED_VOXEL
    assert image.data[i, j, k + 2] == MARKED_STORED - 1024
    args = ["import-landmarks", *points.cli_args(), "--reference", str(tmp_path / "t50.nii.gz")]
    assert main([*args, "--out", str(tmp_path / "t50.csv")]) == 0
    np.testing.assert_array_equal(load_landmarks(tmp_path / "t50.csv", image)[0], (i, j, k + 2))


@pytest.mark.parametrize(
    ("name", "case", "phase"),
    [("case1_T00_s.img", 1, "T00"), ("case2_T50-ssm.img", 2, "T50"), ("case10_T90.img", 10, "T90"),
     ("Case8_T00_s.img", 8, "T00")],
)
def test_dirlab_image_names(name: str, case: int, phase: str) -> None:
    match = dirlab.DIRLAB_IMAGE_NAME.fullmatch(name)
    assert match and (int(match.group("case")), match.group("phase")) == (case, phase)


@pytest.mark.parametrize(
    ("name", "case", "phase"),
    [("Case1_300_T00_xyz.txt", 1, "T00"), ("case6_dirLab300_T50_xyz.txt", 6, "T50")],
)
def test_dirlab_landmark_names(name: str, case: int, phase: str) -> None:
    match = dirlab.DIRLAB_LANDMARK_NAME.fullmatch(name)
    assert match and (int(match.group("case")), match.group("phase")) == (case, phase)
    assert dirlab.DIRLAB_LANDMARK_NAME.fullmatch("case1_4D-75_T00.txt") is None


def test_dirlab_errors(tmp_path: Path) -> None:
    root = write_dirlab_case1(tmp_path)
    with pytest.raises(InputError, match=r"config key datasets.d.cases: case 11 is not allowed; .*cases 1-10"):
        manifest("dirlab", root, cases=[11])
    with pytest.raises(InputError, match=r"config key datasets.d.phases: 'T05' is not allowed"):
        manifest("dirlab", root, phases=["T00", "T05"])
    with pytest.raises(InputError, match=r"config key datasets.d.path: no image caseN_T20\*.img of case 1"):
        manifest("dirlab", root, phases=["T00", "T20"])
    with pytest.raises(InputError, match=r"config key datasets.d.fixed_phase: 'T20' is not allowed; allowed: T00, T50"):
        manifest("dirlab", root, fixed_phase="T20")
    (root / "Case1Pack/ExtremePhases/Case1_300_T50_xyz.txt").unlink()
    with pytest.raises(InputError, match=r"no landmark file case1_300_T50_xyz.txt .*landmarks: false"):
        manifest("dirlab", root)
    assert "case1-T50" not in manifest("dirlab", root, landmarks=False).landmark_imports
    with (root / "Case1Pack/Images/case1_T00_s.img").open("ab") as f:
        f.write(b"\0\0")
    with pytest.raises(InputError, match=r"case1_T00_s.img: holds 12320770 bytes; a 256x256x94 volume of <i2 needs"):
        manifest("dirlab", root, landmarks=False)
    with pytest.raises(InputError, match=r"config key datasets.d.path: no DIR-Lab image"):
        manifest("dirlab", tmp_path / "Case1Pack" / "ExtremePhases")


# ------------------------------------------------------------------------------- Learn2Reg


def pair_entry(case: int) -> dict[str, str]:
    """A Learn2Reg pair: fixed scan 0000, moving scan 0001 of an NLST case."""
    return {role: f"./imagesTr/NLST_{case:04d}_{scan:04d}.nii.gz" for role, scan in (("fixed", 0), ("moving", 1))}


def write_learn2reg(root: Path) -> Path:
    """NLST-like layout: imagesTr/, masksTr/, keypointsTr/ (headerless x,y,z CSV) and NLST_dataset.json."""
    training = []
    for case in (1, 2):
        for scan in (0, 1):
            name = f"NLST_{case:04d}_{scan:04d}"
            write_nifti(root / "imagesTr" / f"{name}.nii.gz", (10, 11, 12), seed=case * 2 + scan)
            write_nifti(root / "masksTr" / f"{name}.nii.gz", (10, 11, 12), labels=True)
            (root / "keypointsTr").mkdir(exist_ok=True)
            (root / "keypointsTr" / f"{name}.csv").write_text(f"1.5,2.0,{3 + scan}.25\n9,10,11\n")
            training.append({"image": f"./imagesTr/{name}.nii.gz", "mask": f"./masksTr/{name}.nii.gz",
                             "keypoints": f"./keypointsTr/{name}.csv"})
    content = {
        "name": "NLST",
        "training": training,
        "training_paired_images": [pair_entry(1)],
        "registration_val": [pair_entry(2)],
    }
    (root / "NLST_dataset.json").write_text(json.dumps(content))
    return root


def test_learn2reg_validation_pairs_and_keypoints(tmp_path: Path) -> None:
    root = write_learn2reg(tmp_path / "NLST")
    result = manifest("learn2reg", root)
    assert result.subjects == ("NLST_0002_0000", "NLST_0002_0001")
    assert result.pairs == (("NLST_0002_0000", "NLST_0002_0001"),)
    files = result.files["NLST_0002_0001"]
    assert Path(files.image) == root / "imagesTr/NLST_0002_0001.nii.gz"
    assert Path(files.mask) == root / "masksTr/NLST_0002_0001.nii.gz"
    assert files.labels is None
    assert result.landmark_imports["NLST_0002_0001"] == LandmarkImport(files.landmarks, "learn2reg-csv")
    reference = load_image(files.image)
    imports.import_landmarks(result.landmark_imports["NLST_0002_0001"], reference, tmp_path / "kp.csv")
    # Learn2Reg keypoints are 0-based voxel indices of the NIfTI array axes: taken as they are
    np.testing.assert_allclose(load_landmarks(tmp_path / "kp.csv", reference), [[1.5, 2.0, 4.25], [9, 10, 11]])


def test_learn2reg_training_split(tmp_path: Path) -> None:
    root = write_learn2reg(tmp_path)
    result = manifest("learn2reg", root, split="training", json="NLST_dataset.json")
    assert result.pairs == (("NLST_0001_0000", "NLST_0001_0001"),)
    content = json.loads((root / "NLST_dataset.json").read_text())
    del content["training_paired_images"]  # OASIS-style: no training pairs -> every training image
    (root / "NLST_dataset.json").write_text(json.dumps(content))
    unpaired = manifest("learn2reg", root, split="training")
    assert unpaired.pairs is None and len(unpaired.subjects) == 4


def test_learn2reg_errors(tmp_path: Path) -> None:
    root = write_learn2reg(tmp_path)
    with pytest.raises(InputError, match=r"datasets.d.split: .*NLST_dataset.json lists no 'registration_test' pairs"):
        manifest("learn2reg", root, split="test")
    with pytest.raises(InputError, match=r"config key datasets.d.split: 'val' is not allowed; allowed: training"):
        manifest("learn2reg", root, split="val")
    with pytest.raises(InputError, match=r"config key datasets.d.json: 'OASIS_dataset.json': file not found"):
        manifest("learn2reg", root, json="OASIS_dataset.json")
    (root / "keypointsTr/NLST_0002_0000.csv").unlink()
    with pytest.raises(InputError, match=r"NLST_dataset.json: lists './keypointsTr/NLST_0002_0000.csv' but"):
        manifest("learn2reg", root)
    (root / "OASIS_dataset.json").write_text("{not json")
    with pytest.raises(InputError, match=r"datasets.d.json: name the dataset JSON .*NLST_dataset.json, OASIS"):
        manifest("learn2reg", root)
    with pytest.raises(InputError, match=r"OASIS_dataset.json: Learn2Reg dataset JSON is not valid JSON"):
        manifest("learn2reg", root, json="OASIS_dataset.json")
    (root / "bad.csv").write_text("1,2\n")
    with pytest.raises(InputError, match=r"bad.csv: line 1 has 2 values; learn2reg-csv expects 3"):
        imports.read_landmark_file(root / "bad.csv", "learn2reg-csv")


# ------------------------------------------------------------------------------------ FIRE

FIRE_SIZE = (40, 30)  # (width, height) pixels; the real images are 2912 x 2912


def write_picture(path: Path, rgb: np.ndarray) -> Path:
    """Write an RGB picture given as (width, height, 3) uint8 (x = column first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(rgb.transpose(1, 0, 2)), isVector=True), str(path))
    return path


def fire_picture(green_at: tuple[int, int]) -> np.ndarray:
    """40x30 picture (R 200, G 40, B 10) with a 16x16 green block (one JPEG block) at ``green_at`` (x, y)."""
    rgb = np.zeros((*FIRE_SIZE, 3), dtype=np.uint8)
    rgb[...] = (200, 40, 10)
    x, y = green_at
    rgb[x:x + 16, y:y + 16] = (0, 230, 0)
    return rgb


def write_fire(root: Path) -> Path:
    for pair in ("A01", "S02"):
        write_picture(root / "Images" / f"{pair}_1.jpg", fire_picture((0, 0)))
        write_picture(root / "Images" / f"{pair}_2.jpg", fire_picture((16, 0)))
        gt = root / "Ground Truth"
        gt.mkdir(parents=True, exist_ok=True)
        (gt / f"control_points_{pair}_1_2.txt").write_text("7.5 7.5 23.5 7.5\n1 2 3 29\n")
    return root


def test_fire_manifest_and_import(tmp_path: Path) -> None:
    root = write_fire(tmp_path / "FIRE")
    result = manifest("fire", root)
    assert result.subjects == ("A01-1", "A01-2", "S02-1", "S02-2")
    assert result.pairs == (("A01-1", "A01-2"), ("S02-1", "S02-2"))
    raw = result.raw_imports["A01-2"]
    assert raw == RawImport(str(root / "Images/A01_2.jpg"), FIRE_SIZE, (1.0, 1.0), "u1")
    assert result.landmark_imports["A01-1"].format == "fire-fixed"
    assert result.landmark_imports["A01-2"] == LandmarkImport(str(root / "Ground Truth/control_points_A01_1_2.txt"),
                                                              "fire-moving")
    assert manifest("fire", root, category="S").subjects == ("S02-1", "S02-2")
    out = tmp_path / "out"
    assert main(["import-raw", *raw.cli_args(), "--out", str(out / "A01-2.nii.gz")]) == 0
    image = load_image(out / "A01-2.nii.gz")
    assert image.shape == FIRE_SIZE and image.spacing == (1.0, 1.0)
    # green channel (JPEG is lossy: within a few grey levels), the block at x 16-31, y 0-15
    assert abs(image.data[23, 7] - 230) < 12 and abs(image.data[8, 24] - 40) < 12
    imports.import_landmarks(result.landmark_imports["A01-2"], image, out / "A01-2.csv")
    points = load_landmarks(out / "A01-2.csv", image)
    np.testing.assert_allclose(points, [[23.5, 7.5], [3, 29]])
    assert image.data[tuple(np.round(points[0]).astype(int))] > 200  # the point lies on the green block
    fixed = imports.read_landmark_file(result.landmark_imports["A01-1"].source, "fire-fixed")
    np.testing.assert_allclose(fixed, [[7.5, 7.5], [1, 2]])


def test_picture_import_is_exact_for_png(tmp_path: Path) -> None:
    """Lossless picture: the green channel lands unchanged at (i, j) = (column, row)."""
    rgb = np.random.default_rng(0).integers(0, 256, (*FIRE_SIZE, 3), dtype=np.uint8)
    path = write_picture(tmp_path / "p.png", rgb)
    image = imports.read_raw(RawImport(str(path), FIRE_SIZE, (0.5, 0.5), "u1"))
    np.testing.assert_array_equal(image.data, rgb[..., 1])
    np.testing.assert_allclose(image.affine, np.diag([-0.5, -0.5, 1.0, 1.0]))
    with pytest.raises(InputError, match=r"p.png: is 40x30 pixels; expected 30x40"):
        imports.read_raw(RawImport(str(path), (30, 40), (1.0, 1.0), "u1"))


def test_fire_errors(tmp_path: Path) -> None:
    root = write_fire(tmp_path)
    with pytest.raises(InputError, match=r"config key datasets.d.category: 'B' is not allowed; allowed: A, P, S"):
        manifest("fire", root, category="B")
    with pytest.raises(InputError, match=r"config key datasets.d.path: no control_points_PNN_1_2.txt"):
        manifest("fire", root, category="P")
    with pytest.raises(InputError, match=r"config key datasets.d.spacing_mm: 0 is not allowed; expected a number > 0"):
        manifest("fire", root, spacing_mm=0)
    (root / "Images/S02_2.jpg").unlink()
    with pytest.raises(InputError, match=r"datasets.d.path: image .*S02_2.jpg of control_points_S02_1_2.txt"):
        manifest("fire", root)
    with pytest.raises(InputError, match=r"config key datasets.d.path: folder .*Images/Images not found"):
        manifest("fire", root / "Images")
    (root / "bad.txt").write_text("1 2 3 4\n5 6 x 8\n")
    with pytest.raises(InputError, match=r"bad.txt: line 2 is not numeric"):
        imports.read_landmark_file(root / "bad.txt", "fire-moving")
    image = load_image(write_nifti(tmp_path / "small.nii.gz", (5, 5)))
    with pytest.raises(InputError, match=r"control_points_A01_1_2.txt: point 1 at voxel \[23.5, 7.5\] is outside"):
        imports.import_landmarks(manifest("fire", root, category="A").landmark_imports["A01-2"], image,
                                  tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


# ------------------------------------------------------------------------- raw import checks


def test_raw_import_checks(tmp_path: Path) -> None:
    path = tmp_path / "v.raw"
    volume = np.arange(24, dtype=">f4").reshape(4, 3, 2)  # big-endian float, C order of (k, j, i)
    volume.tofile(path)
    image = imports.read_raw(RawImport(str(path), (2, 3, 4), (1.0, 2.0, 3.0), ">f4", "RAS"))
    np.testing.assert_array_equal(image.data, volume.transpose())
    np.testing.assert_allclose(image.affine, np.diag([1.0, 2.0, 3.0, 1.0]))
    assert image.data[1, 2, 3] == 23.0
    little = imports.read_raw(RawImport(str(path), (2, 3, 4), (1.0, 2.0, 3.0), "<f4"))
    assert not np.array_equal(little.data, image.data)  # the byte order is honoured, not guessed
    cases = [
        (RawImport(str(path), (2, 3, 5), (1, 1, 1), ">f4"), r"v.raw: holds 96 bytes; a 2x3x5 volume of >f4 needs 120"),
        (RawImport(str(path), (2, 3, 4), (1, 1, 1), "<c8"), r"dtype '<c8' is not allowed"),
        (RawImport(str(path), (2, 3, 4), (1, 1, 1), "int17"), r"dtype 'int17' is not a numpy dtype"),
        (RawImport(str(path), (2, 3, 4), (1, 1), ">f4"), r"spacing \(1, 1\) is not allowed; expected 3 values"),
        (RawImport(str(path), (2, 3, 4), (1, 1, 1), ">f4", "LPL"), r"orientation 'LPL' is not allowed"),
        (RawImport(str(path), (24,), (1.0,), ">f4"), r"shape \(24,\) is not allowed"),
        (RawImport(str(tmp_path / "none.img"), (2, 3, 4), (1, 1, 1), ">f4"), r"none.img: file not found"),
    ]
    for raw, message in cases:
        with pytest.raises(InputError, match=message):
            imports.read_raw(raw)


def test_import_raw_cli_error_leaves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "v.img").write_bytes(b"\0" * 10)
    out = tmp_path / "v.nii.gz"
    args = ["import-raw", "--raw", str(tmp_path / "v.img"), "--shape", "2", "2", "2", "--spacing", "1", "1", "1",
            "--dtype", "<i2", "--out", str(out)]
    assert main(args) == 2
    assert "v.img: holds 10 bytes; a 2x2x2 volume of <i2 needs 16" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_folder_manifest_on_aligned_brains(shared_data: Path) -> None:
    root = shared_data / "aligned-brains"
    result = manifest("folder", root, image="{subject}/t1w.nii.gz", labels="{subject}/aseg.nii.gz",
                      pairs=[["subject-a", "subject-b"]])
    assert result.subjects == ("slice-atlas", "subject-a", "subject-b")
    assert result.pairs == (("subject-a", "subject-b"),)
    image, labels = load_image(result.files["subject-b"].image), load_image(result.files["subject-b"].labels, "labels")
    assert image.shape == labels.shape == (160, 192, 224)


@pytest.mark.realdata
def test_folder_manifest_with_real_elastix_points(shared_data: Path) -> None:
    """The elastix test data: index point files next to the lung masks they were placed on."""
    root = shared_data / "lung-ct-small"
    result = manifest("folder", root, image="3DCT_lung_{subject}_mask.mha", landmarks="3DCT_lung_{subject}.txt")
    assert result.subjects == ("baseline", "followup")
    for subject, first in (("baseline", (94, 92, 114)), ("followup", (96, 96, 117))):
        reference = load_image(result.files[subject].image)
        points = load_landmarks(result.files[subject].landmarks, reference)
        assert points.shape == (10, 3)
        np.testing.assert_array_equal(points[0], first)
        assert reference.data[tuple(points.astype(int).T)].mean() > 0.5  # the points lie in the lungs


@pytest.mark.realdata
def test_picture_import_of_a_real_fundus(shared_data: Path, tmp_path: Path) -> None:
    """A real fundus JPEG: the imported image is its green channel, pixel (column, row) at index (i, j)."""
    path = shared_data / "fundus" / "refer.jpg"
    raw = RawImport(str(path), (1382, 1382), (1.0, 1.0), "u1")
    imports.import_raw(raw, tmp_path / "refer.nii.gz")
    image = load_image(tmp_path / "refer.nii.gz")
    assert image.shape == (1382, 1382)
    rgb = np.asarray(matplotlib.image.imread(str(path)))  # (rows, columns, 3), another JPEG decoder
    difference = np.abs(image.data - rgb[..., 1].T.astype(np.float32))
    assert difference.mean() < 1.0
    green, red = rgb[..., 1].astype(float), rgb[..., 0].astype(float)
    assert not np.allclose(green, red)  # the channel matters
