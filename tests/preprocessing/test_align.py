"""Tests of registration_core.preprocessing.align: rigid/affine pre-alignment, exact landmark mapping, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml
from scipy import ndimage

from registration_core.core.io import (
    Image,
    image_from_sitk,
    image_to_sitk,
    load_image,
    load_landmarks,
    save_image,
    save_landmarks,
    voxel_to_ras,
)
from registration_core.errors import InputError
from registration_core.evaluation.metrics import dice_summary
from registration_core.preprocessing.align import (
    affine_align,
    align_to_fixed,
    apply_alignment,
    check_align_settings,
    map_points_to_fixed,
)
from registration_core.preprocessing.steps import normalize, resample, resample_to

from support.cli import run_cli
from support.paths import REPO_ROOT

AFFINE_2D = np.diag([2.0, 2.0, 1.0, 1.0])  # 2 mm pixels
SUBCORTICAL = [10, 11, 12, 13, 17, 18, 49, 50, 51, 52, 53, 54]


def blobs() -> tuple[Image, Image]:
    """An asymmetric 2D phantom (64 x 64 at 2 mm): three smooth ellipses and their labels 1..3."""
    index = np.indices((64, 64), dtype=np.float64)
    image, labels = np.zeros((64, 64)), np.zeros((64, 64), np.int32)
    for label, (centre, radii, value) in enumerate(
        [((30, 34), (18, 12), 1.0), ((22, 28), (5, 7), 2.0), ((40, 40), (4, 4), 3.0)], start=1
    ):
        distance = np.sqrt(sum(((index[a] - centre[a]) / radii[a]) ** 2 for a in range(2)))
        image = np.maximum(image, value / (1 + np.exp((distance - 1) * 8)))
        labels[distance <= 1] = label
    return Image(image.astype(np.float32), AFFINE_2D), Image(labels, AFFINE_2D)


def rigid_2d(angle_deg: float, translation_mm: tuple[float, float], centre: Image) -> sitk.Euler2DTransform:
    """A rigid ITK transform (LPS mm) rotating about the image centre."""
    itk_image = image_to_sitk(centre)
    middle = itk_image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in itk_image.GetSize()])
    return sitk.Euler2DTransform(middle, np.deg2rad(angle_deg), translation_mm)


def warp_with(image: Image, transform: sitk.Transform, interpolator: int) -> Image:
    """``image o transform`` on the image's own grid (ITK resampling)."""
    itk_image = image_to_sitk(image)
    return image_from_sitk(sitk.Resample(itk_image, itk_image, transform, interpolator, 0.0))


def test_rigid_alignment_recovers_a_known_motion_and_carries_labels_and_landmarks() -> None:
    fixed, fixed_labels = blobs()
    truth = rigid_2d(12.0, (6.0, -4.0), fixed)
    moving = warp_with(fixed, truth, sitk.sitkLinear)  # moving = fixed o truth
    moving_labels = warp_with(fixed_labels, truth, sitk.sitkNearestNeighbor)
    fixed_points = np.array([[22.0, 28.0], [40.0, 40.0], [30.0, 34.0]])  # centres of the ellipses
    # the moving image shows fixed point p at truth^-1(p)
    moving_points = map_points_to_fixed(fixed_points, truth, fixed, fixed)
    aligned = align_to_fixed(fixed, moving, moving_labels, moving_points, transform="rigid", seed=1)
    assert aligned.image.same_grid(fixed) and aligned.labels.data.dtype == moving_labels.data.dtype
    error_mm = np.linalg.norm(aligned.landmarks - fixed_points, axis=1) * 2.0  # 2 mm pixels
    assert error_mm.max() < 1.0  # half a pixel
    before = dice_summary(fixed_labels.data, moving_labels.data, [1, 2, 3])["mean"]
    after = dice_summary(fixed_labels.data, aligned.labels.data, [1, 2, 3])["mean"]
    assert before < 0.7 and after > 0.9
    assert np.abs(aligned.image.data - fixed.data).mean() < 0.25 * np.abs(moving.data - fixed.data).mean()


def test_landmarks_are_mapped_exactly_through_the_transform() -> None:
    """Moving voxel -> fixed voxel (through T^-1) -> back through T: a round trip within 0.01 mm."""
    fixed = Image(np.zeros((20, 30, 10), np.float32), np.diag([1.5, 1.0, 3.0, 1.0]))
    permuted = np.array([[0, -2.0, 0, 10], [1.2, 0, 0, -5], [0, 0, 2, 3], [0, 0, 0, 1]])
    moving = Image(np.zeros((16, 16, 16), np.float32), permuted)
    transform = sitk.AffineTransform(3)
    transform.SetMatrix([1.1, 0.1, 0.0, -0.05, 0.9, 0.2, 0.0, 0.1, 1.05])
    transform.SetTranslation((3.0, -2.0, 5.0))
    transform.SetCenter((1.0, 2.0, 3.0))
    points = np.array([[0.0, 0.0, 0.0], [3.5, 7.25, 11.0], [15.0, 15.0, 15.0]])
    on_fixed = map_points_to_fixed(points, transform, moving, fixed)
    flip = np.array([-1.0, -1.0, 1.0])
    back_lps = np.array([transform.TransformPoint(tuple(p)) for p in voxel_to_ras(on_fixed, fixed.affine) * flip])
    error_mm = np.linalg.norm(back_lps * flip - voxel_to_ras(points, moving.affine), axis=1)
    assert error_mm.max() < 0.01
    with pytest.raises(InputError, match="not \\(N, 3\\)"):
        map_points_to_fixed(points[:, :2], transform, moving, fixed)


def test_resampled_labels_and_landmarks_agree() -> None:
    """A landmark at a label's centroid stays at the centroid of the resampled label (within a voxel)."""
    fixed, fixed_labels = blobs()
    transform = rigid_2d(-20.0, (3.0, 5.0), fixed)
    centroid = np.argwhere(fixed_labels.data == 2).mean(axis=0)
    aligned = apply_alignment(transform, fixed, fixed, fixed_labels, centroid[None])
    np.testing.assert_allclose(aligned.landmarks[0], np.argwhere(aligned.labels.data == 2).mean(axis=0), atol=1.0)


def test_settings_are_checked() -> None:
    assert check_align_settings({"transform": "rigid", "iterations": 5}) == {"transform": "rigid", "iterations": 5}
    for settings, message in [
        ({"transform": "bspline"}, "'transform'"),
        ({"sampling": 0}, "'sampling'"),
        ({"levels": 3}, "unknown setting 'levels'; allowed: transform,"),
    ]:
        with pytest.raises(InputError, match=message):
            check_align_settings(settings)
    fixed, _ = blobs()
    with pytest.raises(InputError, match="fixed is 2D but moving is 3D"):
        align_to_fixed(fixed, Image(np.ones((4, 4, 4), np.float32), np.eye(4)))


def test_cli_affine_align(tmp_path: Path) -> None:
    fixed, fixed_labels = blobs()
    truth = rigid_2d(8.0, (4.0, 2.0), fixed)
    save_image(fixed, tmp_path / "fixed.nii.gz")
    save_image(warp_with(fixed, truth, sitk.sitkLinear), tmp_path / "moving.nii.gz")
    save_image(warp_with(fixed_labels, truth, sitk.sitkNearestNeighbor), tmp_path / "moving_labels.nii.gz")
    save_landmarks(map_points_to_fixed(np.array([[22.0, 28.0]]), truth, fixed, fixed), fixed, tmp_path / "points.csv")
    result = run_cli(
        "preprocess", "affine-align",
        "--reference", tmp_path / "fixed.nii.gz", "--image", tmp_path / "moving.nii.gz",
        "--labels", tmp_path / "moving_labels.nii.gz", "--landmarks", tmp_path / "points.csv",
        "--out", tmp_path / "out.nii.gz", "--out-labels", tmp_path / "out_labels.nii.gz",
        "--out-landmarks", tmp_path / "out.csv", "--set", "transform=rigid", timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out_labels = load_image(tmp_path / "out_labels.nii.gz", "labels")
    assert out_labels.same_grid(fixed) and dice_summary(fixed_labels.data, out_labels.data, [1, 2, 3])["mean"] > 0.9
    np.testing.assert_allclose(load_landmarks(tmp_path / "out.csv", fixed), [[22.0, 28.0]], atol=0.5)


@pytest.mark.realdata
@pytest.mark.slow
def test_affine_alignment_of_real_brains_raises_subcortical_dice(shared_data: Path) -> None:
    """OASIS-TRT sub-02 onto sub-01 at 2 mm: mean subcortical Dice 0.00 unaligned -> 0.60 affine (measured)."""

    def subject(name: str) -> tuple[Image, Image]:
        folder = shared_data / "oasis-trt" / name
        image, labels = load_image(folder / "t1w_brain.nii.gz"), load_image(folder / "labels.nii.gz", "labels")
        return resample(image, spacing=2.0), resample(labels, spacing=2.0)

    (fixed, fixed_labels), (moving, moving_labels) = subject("sub-01"), subject("sub-02")
    before = dice_summary(fixed_labels.data, resample_to(moving_labels, fixed_labels).data, SUBCORTICAL)["mean"]
    aligned = align_to_fixed(fixed, moving, moving_labels, transform="affine")
    after = dice_summary(fixed_labels.data, aligned.labels.data, SUBCORTICAL)["mean"]
    assert after >= 0.5 and after >= before + 0.3, (before, after)


def textured_disk_pair(angle_deg: float, translation_mm: tuple[float, float]) -> tuple[Image, Image, sitk.Transform]:
    """A 128 x 128 (1 mm) smooth random texture (correlation length ~6 px) seen through a fixed circular field of view (radius 56).

    The moving image shows the texture moved by a rigid ``truth`` (moving = texture o truth)
    behind the same field of view, like two fundus photographs of a moving eye: the field
    of view's edge stays put while the content moves. Background 0, texture in [0.3, 1].
    """
    rng = np.random.default_rng(0)
    texture = ndimage.gaussian_filter(rng.standard_normal((128, 128)), 6.0)
    texture = 0.3 + 0.7 * (texture - texture.min()) / (texture.max() - texture.min())
    index = np.indices((128, 128), dtype=np.float64)
    field_of_view = np.hypot(index[0] - 63.5, index[1] - 63.5) <= 56
    affine = np.eye(4)
    content = Image(texture.astype(np.float32), affine)
    truth = rigid_2d(angle_deg, translation_mm, content)
    moved = warp_with(content, truth, sitk.sitkLinear)
    fixed, moving = (Image((data * field_of_view).astype(np.float32), affine) for data in (texture, moved.data))
    return fixed, moving, truth


def transform_error_vox(estimated: sitk.Transform, truth: sitk.Transform, image: Image) -> float:
    """Largest distance (voxels = mm here) between the two transforms' images of points inside the field of view."""
    voxels = np.array([(i, j) for i in range(34, 95, 10) for j in range(34, 95, 10)], dtype=np.float64)
    points = [tuple(p) for p in voxel_to_ras(voxels, image.affine) * [-1.0, -1.0]]  # LPS mm
    return max(
        float(np.linalg.norm(np.subtract(estimated.TransformPoint(p), truth.TransformPoint(p)))) for p in points
    )


def test_search_initialisation_recovers_a_large_motion_behind_a_fixed_field_of_view() -> None:
    """40 mm (40 px) translation + 10 degrees: the default stays near the identity, the search finds it."""
    fixed, moving, truth = textured_disk_pair(10.0, (24.0, -32.0))
    default = affine_align(fixed, moving, transform="rigid")
    searched = affine_align(
        fixed, moving, transform="rigid", init="search", mask="foreground", search_shift=0.35, search_angle_deg=20
    )
    # fixed(x) = moving(T(x)) for T = truth^-1
    assert transform_error_vox(default, truth.GetInverse(), fixed) > 10
    assert transform_error_vox(searched, truth.GetInverse(), fixed) < 1.5


def test_search_settings_are_bounded() -> None:
    fixed, moving, _ = textured_disk_pair(0.0, (0.0, 0.0))
    with pytest.raises(InputError, match="search positions; at most"):
        affine_align(fixed, moving, init="search", search_shift=1.0, search_angle_deg=180, shrink_factors=(1,))
    with pytest.raises(InputError, match="setting 'init' must be one of moments, geometry, search, got 'edges'"):
        affine_align(fixed, moving, init="edges")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="'features'"):
        check_align_settings({"features": "phase"})


@pytest.mark.realdata
def test_search_alignment_of_the_fundus_pair_raises_correlation_in_the_field_of_view(shared_data: Path) -> None:
    """refer (fixed) / query (moving) at 256 x 256, the fundus study's settings: the optic disc
    is ~80 px apart before; NCC inside the common field of view 0.36 before -> 0.82 after (measured)."""

    def picture(name: str) -> Image:
        rgb = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / "fundus" / f"{name}.jpg")))
        green = Image(np.ascontiguousarray(rgb[..., 1].T).astype(np.float32), np.eye(4))
        return normalize(resample(green, shape=(256, 256)))

    fixed, moving = picture("refer"), picture("query")
    settings = yaml.safe_load((REPO_ROOT / "config/studies/fundus.yaml").read_text())
    align = settings["datasets"]["fundus"]["align"]
    assert align["init"] == "search"

    def ncc_in_view(image: Image) -> float:
        inside = ndimage.binary_erosion((fixed.data > 0.05) & (image.data > 0.05), iterations=4)
        a, b = fixed.data[inside] - fixed.data[inside].mean(), image.data[inside] - image.data[inside].mean()
        return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))

    before = ncc_in_view(moving)
    after = ncc_in_view(align_to_fixed(fixed, moving, **align).image)
    assert before < 0.5 and after > 0.75, (before, after)
