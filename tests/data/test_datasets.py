"""Tests of registration_core.data.demo (the embedded MNI152 demo) and the folder adapter's path patterns
(registration_core.data.adapters.patterns)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from registration_core.core.io import Image, load_image
from registration_core.data import demo
from registration_core.data.adapters.patterns import discover_subjects, subject_files
from registration_core.errors import InputError

LEFT, RIGHT = (1, 2, 3), (4, 5, 6)  # CSF, GM, WM per hemisphere


@pytest.fixture(scope="module")
def template() -> tuple[Image, Image]:
    return demo.demo_template(2.0)


@pytest.fixture(scope="module")
def subject_one() -> tuple[Image, Image]:
    return demo.make_demo_subject(1, seed=42)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.sum(a & b) / (np.sum(a) + np.sum(b))


def test_template_grid(template: tuple[Image, Image]) -> None:
    image, labels = template
    assert image.shape == labels.shape == (100, 118, 96)
    assert image.spacing == (2.0, 2.0, 2.0)
    assert image.same_grid(labels)
    assert image.data.dtype == np.float32 and labels.data.dtype == np.int32
    assert 0.0 <= image.data.min() and image.data.max() <= 1.0
    # centred on the mid-sagittal plane: voxel centres at x = +-1, +-3, ... mm, none on x = 0
    x_mm = image.affine[0, 0] * np.arange(image.shape[0]) + image.affine[0, 3]
    np.testing.assert_allclose(x_mm[[0, 49, 50, 99]], [-99.0, -1.0, 1.0, 99.0])


def test_template_labels_have_plausible_volumes(template: tuple[Image, Image]) -> None:
    image, labels = template
    assert set(np.unique(labels.data)) == {0, *demo.DEMO_LABELS}
    counts = {label: int(np.sum(labels.data == label)) for label in demo.DEMO_LABELS}
    brain = sum(counts.values())
    brain_litres = brain * 8.0 / 1e6  # 2 mm voxels are 8 mm^3
    assert 1.4 < brain_litres < 2.2
    fractions = {label: count / brain for label, count in counts.items()}
    for csf, gm, wm in (LEFT, RIGHT):
        assert 0.02 < fractions[csf] < 0.10
        assert 0.20 < fractions[gm] < 0.35
        assert 0.12 < fractions[wm] < 0.25
    for left, right in zip(LEFT, RIGHT):
        assert counts[left] == pytest.approx(counts[right], rel=0.05)


def test_template_hemispheres_and_tissue_contrast(template: tuple[Image, Image]) -> None:
    image, labels = template
    x_mm = image.affine[0, 0] * np.arange(image.shape[0]) + image.affine[0, 3]
    x_of = np.broadcast_to(x_mm[:, None, None], image.shape)
    assert np.all(x_of[np.isin(labels.data, LEFT)] < 0)
    assert np.all(x_of[np.isin(labels.data, RIGHT)] > 0)
    # T1 contrast: CSF < GM < WM, and background is black
    mean = {label: float(image.data[labels.data == label].mean()) for label in (0, *demo.DEMO_LABELS)}
    for csf, gm, wm in (LEFT, RIGHT):
        assert mean[csf] + 0.1 < mean[gm] < mean[wm] - 0.1
    assert mean[0] < 0.01


def test_tissue_classes_rule() -> None:
    t1 = np.array([0.0, 0.5, 0.5, 0.5, 0.5, 0.05])
    p_gm = np.array([0.9, 0.6, 0.2, 0.1, 0.3, 0.9])
    p_wm = np.array([0.0, 0.3, 0.7, 0.1, 0.35, 0.0])
    # background, GM, WM, CSF (p_csf 0.8), CSF (p_csf 0.35 ties p_wm: first wins), below the mask threshold
    np.testing.assert_array_equal(demo.tissue_classes(t1, p_gm, p_wm), [0, 2, 3, 1, 1, 0])


def test_subject_zero_is_the_template(template: tuple[Image, Image]) -> None:
    image, labels = demo.make_demo_subject(0, seed=42)
    np.testing.assert_array_equal(image.data, template[0].data)
    np.testing.assert_array_equal(labels.data, template[1].data)
    np.testing.assert_array_equal(image.affine, template[0].affine)


def test_subject_is_a_deformed_template(template: tuple[Image, Image], subject_one: tuple[Image, Image]) -> None:
    image, labels = subject_one
    assert image.same_grid(template[0]) and labels.same_grid(template[1])
    assert set(np.unique(labels.data)) <= {0, *demo.DEMO_LABELS}
    assert 0.0 <= image.data.min() and image.data.max() <= 1.0
    for label in (2, 3, 5, 6):  # GM / WM overlap with the atlas: moved, but the same anatomy
        overlap = dice(labels.data == label, template[1].data == label)
        assert 0.5 < overlap < 0.95
    brain_change = np.sum(labels.data > 0) / np.sum(template[1].data > 0)
    assert 0.85 < brain_change < 1.15


def test_subject_is_deterministic() -> None:
    first = demo.make_demo_subject(1, seed=42, spacing_mm=4.0)
    again = demo.make_demo_subject(1, seed=42, spacing_mm=4.0)
    np.testing.assert_array_equal(first[0].data, again[0].data)
    np.testing.assert_array_equal(first[1].data, again[1].data)
    other_seed = demo.make_demo_subject(1, seed=43, spacing_mm=4.0)[1].data
    other_index = demo.make_demo_subject(2, seed=42, spacing_mm=4.0)[1].data
    assert not np.array_equal(first[1].data, other_seed) and not np.array_equal(first[1].data, other_index)


def test_write_demo_subject_round_trip(tmp_path: Path) -> None:
    out_image, out_labels = tmp_path / "s" / "image.nii.gz", tmp_path / "s" / "labels.nii.gz"
    demo.write_demo_subject(3, 0, out_image, out_labels, spacing_mm=4.0, max_disp_mm=6.0)
    expected_image, expected_labels = demo.make_demo_subject(3, 0, spacing_mm=4.0, max_disp_mm=6.0)
    image, labels = load_image(out_image), load_image(out_labels, kind="labels")
    np.testing.assert_array_equal(image.data, expected_image.data)
    np.testing.assert_array_equal(labels.data, expected_labels.data)
    np.testing.assert_allclose(image.affine, expected_image.affine)
    assert image.shape == (50, 60, 48)


def test_demo_never_imports_nilearn() -> None:
    """The bundled files are read directly, so no nilearn fetcher (and no download) can run."""
    code = (
        "import sys; from registration_core.data import demo; demo.demo_template(4.0); "
        "assert 'nilearn' not in sys.modules, 'nilearn was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: demo.make_demo_subject(-1, 0), "index=-1"),
        (lambda: demo.make_demo_subject(1, True), "seed=True"),
        (lambda: demo.make_demo_subject(1.0, 0), "index=1.0"),
        (lambda: demo.demo_template(0.1), "spacing_mm=0.1"),
        (lambda: demo.write_demo_subject(1, 0, Path("a.nii.gz"), Path("b.nii.gz"), size=3), "'size'"),
    ],
)
def test_demo_rejects_bad_arguments(call, message: str) -> None:
    with pytest.raises(InputError, match=message):
        call()


def touch(root: Path, *relative: str) -> None:
    for rel in relative:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")


def test_discover_subjects_in_folders(tmp_path: Path) -> None:
    touch(tmp_path, "b/t1w.nii.gz", "a/t1w.nii.gz", "c/other.nii.gz", "a/t1w.nii.gz.bak")
    (tmp_path / "d" / "t1w.nii.gz").mkdir(parents=True)  # a folder is not an image file
    assert discover_subjects(tmp_path, "{subject}/t1w.nii.gz") == ["a", "b"]
    assert discover_subjects(tmp_path, "{subject}/t1w.nii.gz", ["b", "a"]) == ["b", "a"]


def test_discover_subjects_flat_and_repeated_patterns(tmp_path: Path) -> None:
    touch(tmp_path, "s2_T1.nii.gz", "s10_T1.nii.gz", "s2_labels.nii.gz")
    assert discover_subjects(tmp_path, "{subject}_T1.nii.gz") == ["s10", "s2"]
    touch(tmp_path, "sub-01/anat/sub-01_T1w.nii.gz", "sub-02/anat/sub-03_T1w.nii.gz")
    assert discover_subjects(tmp_path, "{subject}/anat/{subject}_T1w.nii.gz") == ["sub-01"]


def test_discover_subjects_errors(tmp_path: Path) -> None:
    touch(tmp_path, "a/t1w.nii.gz")
    with pytest.raises(InputError, match=r"dataset path .*missing does not exist"):
        discover_subjects(tmp_path / "missing", "{subject}/t1w.nii.gz")
    no_match = r"no subject in dataset path .* matches the image pattern '\{subject\}/T1.nii'"
    with pytest.raises(InputError, match=no_match):
        discover_subjects(tmp_path, "{subject}/T1.nii")
    with pytest.raises(InputError, match=r"image file .*b/t1w.nii.gz not found"):
        discover_subjects(tmp_path, "{subject}/t1w.nii.gz", ["a", "b"])
    with pytest.raises(InputError, match="must contain"):
        discover_subjects(tmp_path, "a/t1w.nii.gz")
    with pytest.raises(InputError, match="glob characters"):
        discover_subjects(tmp_path, "{subject}/*.nii.gz")
    with pytest.raises(InputError, match="listed more than once"):
        discover_subjects(tmp_path, "{subject}/t1w.nii.gz", ["a", "a"])
    with pytest.raises(InputError, match="non-empty list"):
        discover_subjects(tmp_path, "{subject}/t1w.nii.gz", [])
    with pytest.raises(InputError, match="subject id '../a'"):
        discover_subjects(tmp_path, "{subject}/t1w.nii.gz", ["../a"])


def test_subject_files(tmp_path: Path) -> None:
    touch(tmp_path, "a/t1w.nii.gz", "a/labels.nii.gz", "mask.nii.gz", "b/t1w.nii.gz")
    patterns = {
        "image": "{subject}/t1w.nii.gz",
        "labels": "{subject}/labels.nii.gz",
        "mask": "mask.nii.gz",
        "landmarks": None,
    }
    assert subject_files(tmp_path, patterns, "a") == {
        "image": tmp_path / "a/t1w.nii.gz",
        "labels": tmp_path / "a/labels.nii.gz",
        "mask": tmp_path / "mask.nii.gz",
    }
    with pytest.raises(InputError, match=r"subject 'b': labels file .*b/labels.nii.gz not found"):
        subject_files(tmp_path, patterns, "b")
    with pytest.raises(InputError, match="key 'seg' is not allowed"):
        subject_files(tmp_path, {"image": "{subject}/t1w.nii.gz", "seg": "x"}, "a")
    with pytest.raises(InputError, match="need an 'image' pattern"):
        subject_files(tmp_path, {"labels": "{subject}/labels.nii.gz"}, "a")


@pytest.mark.realdata
def test_folder_adapter_on_oasis_trt(shared_data: Path) -> None:
    root = shared_data / "oasis-trt"
    image, labels, landmarks = "{subject}/t1w_brain.nii.gz", "{subject}/labels.nii.gz", "{subject}/landmarks.txt"
    expected = [f"sub-{i:02d}" for i in range(1, 11)]
    assert discover_subjects(root, image) == expected
    assert discover_subjects(root, image, ["sub-03", "sub-01"]) == ["sub-03", "sub-01"]
    files = subject_files(root, {"image": image, "labels": labels}, "sub-07")
    assert files == {"image": root / "sub-07/t1w_brain.nii.gz", "labels": root / "sub-07/labels.nii.gz"}
    with pytest.raises(InputError, match="sub-99/t1w_brain.nii.gz not found"):
        discover_subjects(root, image, ["sub-01", "sub-99"])
    with pytest.raises(InputError, match="landmarks file .*sub-01/landmarks.txt not found"):
        subject_files(root, {"image": image, "landmarks": landmarks}, "sub-01")
