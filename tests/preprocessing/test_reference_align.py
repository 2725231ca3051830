"""The ``affine_align`` preprocessing step: 3D alignment onto a reference subject before slicing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from registration_core.core.io import Image, load_image, load_landmarks, save_image, save_landmarks
from registration_core.errors import InputError
from registration_core.preprocessing.steps import prepare_subject

from support.cli import run_cli

SPACING = 2.0
SHIFT_MM = np.array([6.0, -4.0, 5.0])
"""Physical shift of the moving subject's content relative to the reference (mm, RAS)."""


def phantom(shape: tuple[int, int, int] = (32, 36, 30)) -> tuple[np.ndarray, np.ndarray]:
    """Smooth intensity volume of three ellipsoids of different brightness and their label map (1, 2, 3)."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    labels = np.zeros(shape, np.int16)
    for label, (centre, radii) in enumerate(
        [((16, 18, 15), (11, 13, 9)), ((12, 14, 13), (4, 5, 3)), ((20, 23, 17), (3, 4, 5))], start=1
    ):
        inside = sum(((grid[a] - centre[a]) / radii[a]) ** 2 for a in range(3)) <= 1
        labels[inside] = label
    intensity = ndimage.gaussian_filter(np.choose(labels, [0.0, 0.4, 1.0, 0.7]), 1.0)
    return intensity.astype(np.float32), labels


def reference_and_moving() -> tuple[Image, Image, Image, np.ndarray]:
    """Reference (identity direction, 2 mm) and a moving subject holding the same content shifted by
    SHIFT_MM, stored with its first axis flipped (other orientation and origin); plus moving labels
    and the moving -> reference voxel map ``M`` (4x4) the alignment must recover."""
    intensity, labels = phantom()
    reference_affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    reference_affine[:3, 3] = [-30.0, -34.0, -28.0]
    flip = np.eye(4)  # moving voxel -> reference-content voxel: i -> n - 1 - i
    flip[0, 0], flip[0, 3] = -1.0, intensity.shape[0] - 1
    shift = np.eye(4)
    shift[:3, 3] = SHIFT_MM
    moving_affine = shift @ reference_affine @ flip
    reference = Image(intensity, reference_affine, None)
    moving = Image(np.ascontiguousarray(intensity[::-1]), moving_affine, None)
    moving_labels = Image(np.ascontiguousarray(labels[::-1]), moving_affine, None)
    return reference, moving, moving_labels, flip


STEP = {"step": "affine_align", "reference": "ref", "transform": "rigid", "shrink_factors": [2, 1], "sampling": 1.0}


def test_moving_subject_lands_on_the_reference_grid() -> None:
    reference, moving, moving_labels, flip = reference_and_moving()
    points = np.array([[5.0, 10.0, 12.0], [20.5, 30.0, 3.0], [16.0, 18.0, 15.0]])
    prepared = prepare_subject(
        moving, [STEP], labels=moving_labels, mask=moving_labels.with_data((moving_labels.data > 0).astype(np.uint8)),
        landmarks=points, reference=reference,
    )
    assert prepared.image.same_grid(reference) and prepared.labels.same_grid(reference)
    _, labels = phantom()
    # labels by nearest neighbour: integer, no new values, nearly every voxel back in place
    assert np.issubdtype(prepared.labels.data.dtype, np.integer)
    assert set(np.unique(prepared.labels.data)) <= {0, 1, 2, 3}
    assert np.mean(prepared.labels.data != labels) < 0.01
    np.testing.assert_array_equal(prepared.mask.data, (prepared.labels.data > 0).astype(np.uint8))
    # the content is where the reference has it (the outer voxels lie outside the shifted moving image)
    inner = (slice(4, -4),) * 3
    assert np.abs(prepared.image.data[inner] - reference.data[inner]).max() < 0.05
    # landmarks: moving voxel p holds reference voxel flip @ p
    expected = (flip[:3, :3] @ points.T).T + flip[:3, 3]
    assert np.abs(prepared.landmarks - expected).max() < 0.5


def test_reference_subject_is_left_unchanged() -> None:
    reference, _, _, _ = reference_and_moving()
    labels = reference.with_data(phantom()[1])
    points = np.array([[3.25, 7.0, 9.5]])
    prepared = prepare_subject(reference, [{"step": "reorient"}, STEP], labels=labels, landmarks=points, reference=reference)
    np.testing.assert_allclose(prepared.image.data, reference.data, atol=1e-6)
    np.testing.assert_array_equal(prepared.labels.data, labels.data)
    np.testing.assert_allclose(prepared.landmarks, points, atol=1e-9)


def test_step_needs_the_reference_image_and_landmarks_stop_at_a_slice() -> None:
    reference, moving, _, _ = reference_and_moving()
    with pytest.raises(InputError, match=r"^preprocessing steps\[0\]: affine_align: needs the reference subject's image"):
        prepare_subject(moving, [STEP])
    with pytest.raises(InputError, match=r"^preprocessing steps\[1\]: slice: landmarks cannot follow"):
        prepare_subject(moving, [{"step": "normalize"}, {"step": "slice"}], landmarks=np.zeros((1, 3)))
    flat = Image(reference.data[:, :, 0], reference.affine, None)
    with pytest.raises(InputError, match=r"affine_align: image is 2D but the reference is 3D"):
        prepare_subject(flat, [STEP], reference=reference)


def test_prepare_command_aligns_onto_the_reference(tmp_path: Path) -> None:
    reference, moving, moving_labels, flip = reference_and_moving()
    for name, image in (("ref", reference), ("mov", moving), ("mov_labels", moving_labels)):
        save_image(image, tmp_path / f"{name}.nii.gz")
    save_landmarks(np.array([[8.0, 9.0, 10.0]]), moving, tmp_path / "points.csv")
    steps = '[{"step": "affine_align", "reference": "ref", "transform": "rigid", "shrink_factors": [2, 1]}]'
    args = [
        "--image", tmp_path / "mov.nii.gz", "--labels", tmp_path / "mov_labels.nii.gz", "--landmarks", tmp_path / "points.csv",
        "--reference", tmp_path / "ref.nii.gz", "--steps", steps, "--out-image", tmp_path / "out.nii.gz",
        "--out-labels", tmp_path / "out_labels.nii.gz", "--out-landmarks", tmp_path / "out_points.csv",
    ]
    result = run_cli("prepare", *args)
    assert result.returncode == 0, result.stderr
    out = load_image(tmp_path / "out.nii.gz")
    assert out.same_grid(reference)
    assert np.mean(load_image(tmp_path / "out_labels.nii.gz", "labels").data != phantom()[1]) < 0.01
    mapped = load_landmarks(tmp_path / "out_points.csv", out)
    assert np.abs(mapped - [[flip[0, 3] - 8.0, 9.0, 10.0]]).max() < 0.5


SUBCORTICAL_MAX = 100
"""OASIS-TRT labels below 100 are the subcortical (aseg-style) ones; 1000s/2000s are cortical."""
TO_SLICE = [{"step": "reorient"}, {"step": "slice", "axis": 2, "index": 0.62}, {"step": "resample", "spacing": 2.0}]


def subcortical_dice(fixed: np.ndarray, moving: np.ndarray) -> float:
    """Mean Dice over the subcortical labels present in ``fixed``."""
    labels = [label for label in np.unique(fixed) if 0 < label < SUBCORTICAL_MAX]
    return float(np.mean([2 * np.sum((fixed == l) & (moving == l)) / (np.sum(fixed == l) + np.sum(moving == l)) for l in labels]))


@pytest.mark.slow
@pytest.mark.realdata
def test_slices_of_aligned_brains_overlap(shared_data: Path) -> None:
    """OASIS-TRT sub-02 aligned in 3D to sub-01 then sliced overlaps sub-01's slice far better than sliced alone."""
    root = shared_data / "oasis-trt"

    def load(subject: str) -> tuple[Image, Image]:
        return load_image(root / subject / "t1w_brain.nii.gz"), load_image(root / subject / "labels.nii.gz", "labels")

    reference, reference_labels = load("sub-01")
    moving, moving_labels = load("sub-02")
    align = {"step": "affine_align", "reference": "sub-01", "shrink_factors": [4, 2]}
    atlas = prepare_subject(reference, [align, *TO_SLICE], labels=reference_labels, reference=reference)
    aligned = prepare_subject(moving, [align, *TO_SLICE], labels=moving_labels, reference=reference)
    sliced = prepare_subject(moving, TO_SLICE, labels=moving_labels)
    assert aligned.labels.same_grid(atlas.labels) and atlas.labels.shape == (80, 128)
    after = subcortical_dice(atlas.labels.data, aligned.labels.data)
    before = subcortical_dice(atlas.labels.data, sliced.labels.data)  # same shape: both RAS 160x256 slices at 2 mm
    assert after > 0.4 and after > before + 0.2


def test_a_later_align_step_meets_the_reference_at_the_same_stage_step_by_step_as_in_one_run(tmp_path: Path) -> None:
    """Steps before ``affine_align`` run on the reference too: the subject lands on the grid of the
    *resampled* reference. One ``preprocess`` command per step (as the workflow runs them, the
    reference's stage file as --reference) gives what one ``prepare`` run of the whole list gives."""
    reference, moving, moving_labels, _ = reference_and_moving()
    steps = [{"step": "resample", "spacing": 3.0}, STEP, {"step": "normalize"}]
    staged_reference = prepare_subject(reference, steps[:1]).image
    in_one_run = prepare_subject(moving, steps, labels=moving_labels, reference=reference)
    assert in_one_run.image.same_grid(staged_reference) and not in_one_run.image.same_grid(reference)
    reference_labels = prepare_subject(reference.with_data(phantom()[1]), steps[:1]).image
    assert np.mean(in_one_run.labels.data != reference_labels.data) < 0.03
    itself = prepare_subject(reference, steps, reference=reference)
    np.testing.assert_array_equal(itself.image.data, prepare_subject(staged_reference, steps[2:]).image.data)

    def run(*args: object) -> None:
        run_cli(*args, check=True)

    for name, image in (("ref", reference), ("mov", moving), ("mov_labels", moving_labels)):
        save_image(image, tmp_path / f"{name}.nii.gz")
    run("preprocess", "resample", "--image", tmp_path / "ref.nii.gz", "--out", tmp_path / "1-ref.nii.gz", "--set", "spacing=3")
    run(
        "preprocess", "resample", "--image", tmp_path / "mov.nii.gz", "--out", tmp_path / "1-mov.nii.gz",
        "--labels", tmp_path / "mov_labels.nii.gz", "--out-labels", tmp_path / "1-mov_labels.nii.gz", "--set", "spacing=3",
    )
    run(
        "preprocess", "affine-align", "--reference", tmp_path / "1-ref.nii.gz",
        "--image", tmp_path / "1-mov.nii.gz", "--out", tmp_path / "2-mov.nii.gz",
        "--labels", tmp_path / "1-mov_labels.nii.gz", "--out-labels", tmp_path / "2-mov_labels.nii.gz",
        *[arg for key in ("transform", "shrink_factors", "sampling") for arg in ("--set", f"{key}={STEP[key]}")],
    )
    run("preprocess", "normalize", "--image", tmp_path / "2-mov.nii.gz", "--out", tmp_path / "3-mov.nii.gz")
    step_by_step = load_image(tmp_path / "3-mov.nii.gz")
    assert step_by_step.same_grid(in_one_run.image)
    np.testing.assert_allclose(step_by_step.data, in_one_run.image.data, atol=1e-4)
    np.testing.assert_array_equal(load_image(tmp_path / "2-mov_labels.nii.gz", "labels").data, in_one_run.labels.data)
