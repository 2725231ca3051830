"""Tests of registration_core.preprocessing.qc: QC pictures before / after preprocessing."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from registration_core.cli import main
from registration_core.core.io import Image, load_image, save_image
from registration_core.errors import InputError
from registration_core.preprocessing import qc


def blob_image(shape: tuple[int, ...], spacing: float) -> tuple[Image, Image]:
    """A bright ellipsoid (image, float) and its label map (1 inside, 2 in its upper half) on a grid."""
    grid = np.indices(shape, dtype=np.float64)
    centre = (np.asarray(shape) - 1) / 2
    radius = np.asarray(shape) / 3
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius)) <= 1.0
    image = inside * 100.0 + np.random.default_rng(0).normal(0, 5, shape)
    labels = np.where(inside, np.where(grid[0] > centre[0], 2, 1), 0).astype(np.int32)
    affine = np.diag([spacing] * 3 + [1.0])
    return Image(data=image.astype(np.float32), affine=affine), Image(data=labels, affine=affine.copy())


def png_pixels(path: Path) -> np.ndarray:
    return matplotlib.image.imread(str(path))  # (height, width, channels)


def test_label_outlines_of_a_block() -> None:
    labels = np.zeros((5, 5), dtype=np.int32)
    labels[1:4, 1:4] = 2
    expected = np.zeros((5, 5), dtype=np.int32)
    expected[1:4, 1:4] = 2
    expected[2, 2] = 0  # the block's centre touches only label 2
    np.testing.assert_array_equal(qc.label_outlines(labels), expected)


def test_mid_slice() -> None:
    array = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(qc.mid_slice(array, 1), array[:, 1, :])
    np.testing.assert_array_equal(qc.mid_slice(array, 2), array[:, :, 2])
    np.testing.assert_array_equal(qc.mid_slice(array[0], 0), array[0])


def test_qc_3d_size_and_overlays(tmp_path: Path) -> None:
    raw, raw_labels = blob_image((30, 24, 20), 1.0)
    prepared, labels = blob_image((15, 12, 10), 2.0)
    mask = labels.with_data((labels.data > 0).astype(np.int32))
    qc.save_qc_png(raw, prepared, tmp_path / "plain.png", title="s1")
    qc.save_qc_png(raw, prepared, tmp_path / "labels.png", raw_labels=raw_labels, prepared_labels=labels, title="s1")
    qc.save_qc_png(raw, prepared, tmp_path / "mask.png", prepared_mask=mask, title="s1")
    plain, with_labels, with_mask = (png_pixels(tmp_path / f"{n}.png") for n in ("plain", "labels", "mask"))
    assert plain.shape[:2] == (3 * qc.PANEL_PX, 2 * qc.PANEL_PX)
    assert with_labels.shape == plain.shape == with_mask.shape
    changed = np.any(with_labels != plain, axis=-1)
    assert changed.sum() > 500  # outlines drawn
    # coloured outline pixels appear in both columns (raw and prepared)
    assert changed[:, : qc.PANEL_PX].any() and changed[:, qc.PANEL_PX:].any()
    mask_changed = np.any(with_mask != plain, axis=-1)
    assert mask_changed.sum() > 100 and not mask_changed[:, : qc.PANEL_PX].any()  # the mask is the prepared image's


def test_qc_2d_and_mixed(tmp_path: Path) -> None:
    raw, raw_labels = blob_image((30, 24, 20), 1.0)
    slice_image = Image(data=raw.data[:, :, 10], affine=raw.affine)
    qc.save_qc_png(slice_image, slice_image, tmp_path / "flat.png")
    assert png_pixels(tmp_path / "flat.png").shape[:2] == (qc.PANEL_PX, 2 * qc.PANEL_PX)
    qc.save_qc_png(raw, slice_image, tmp_path / "mixed.png", raw_labels=raw_labels)  # a slice step
    assert png_pixels(tmp_path / "mixed.png").shape[:2] == (3 * qc.PANEL_PX, 2 * qc.PANEL_PX)


def test_qc_rejects_overlays_off_grid(tmp_path: Path) -> None:
    raw, raw_labels = blob_image((30, 24, 20), 1.0)
    prepared, labels = blob_image((15, 12, 10), 2.0)
    with pytest.raises(InputError, match=r"qc: labels .*shape \(30, 24, 20\)\) is not on the grid .*\(15, 12, 10\)"):
        qc.save_qc_png(raw, prepared, tmp_path / "x.png", prepared_labels=raw_labels)
    with pytest.raises(InputError, match=r"qc: raw labels"):
        qc.save_qc_png(raw, prepared, tmp_path / "x.png", raw_labels=labels)
    assert not (tmp_path / "x.png").exists()


def test_qc_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw, raw_labels = blob_image((30, 24, 20), 1.0)
    prepared, labels = blob_image((15, 12, 10), 2.0)
    for name, image in (("raw", raw), ("raw_labels", raw_labels), ("image", prepared), ("labels", labels)):
        save_image(image, tmp_path / f"{name}.nii.gz")
    args = ["qc", "--raw-image", str(tmp_path / "raw.nii.gz"), "--raw-labels", str(tmp_path / "raw_labels.nii.gz"),
            "--image", str(tmp_path / "image.nii.gz"), "--labels", str(tmp_path / "labels.nii.gz"),
            "--mask", str(tmp_path / "labels.nii.gz"), "--title", "subject s1", "--out", str(tmp_path / "qc/s1.png")]
    assert main(args) == 0
    assert png_pixels(tmp_path / "qc/s1.png").shape[:2] == (3 * qc.PANEL_PX, 2 * qc.PANEL_PX)
    args[args.index("--labels") + 1] = str(tmp_path / "raw_labels.nii.gz")
    assert main([*args[:-1], str(tmp_path / "bad.png")]) == 2
    assert "is not on the grid" in capsys.readouterr().err and not (tmp_path / "bad.png").exists()


@pytest.mark.realdata
def test_qc_of_a_real_brain(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "aligned-brains" / "subject-a"
    image, labels = load_image(folder / "t1w.nii.gz"), load_image(folder / "aseg.nii.gz", "labels")
    qc.save_qc_png(image, image, tmp_path / "plain.png")
    qc.save_qc_png(image, image, tmp_path / "qc.png", raw_labels=labels, prepared_labels=labels, title="subject-a")
    plain, with_labels = png_pixels(tmp_path / "plain.png"), png_pixels(tmp_path / "qc.png")
    assert with_labels.shape[:2] == (3 * qc.PANEL_PX, 2 * qc.PANEL_PX)
    assert np.any(with_labels != plain, axis=-1).sum() > 5000  # dozens of aseg structures outlined
