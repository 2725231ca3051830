"""Test data shared by the method tests: smooth random textures and analytic pairs (known
translation, known affine), a real brain slice pair with a known smooth deformation, and the small
real lung CT with one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from registration_core.core.io import Image, load_image
from registration_core.data import synth
from registration_core.data.truth import deform_with_truth
from registration_core.preprocessing.steps import extract_slice

# a 2D grid with anisotropic spacing, a flipped first axis and an origin: exercises LPS/RAS and mm -> voxels
AFFINE_2D = np.array([[-1.5, 0, 0, 40.0], [0, 0.8, 0, -12.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])


def blobs(shape: tuple[int, ...], seed: int, sigma: float = 5.0) -> np.ndarray:
    """A smooth random texture in [0, 1] (Gaussian-filtered noise)."""
    img = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), sigma)
    return ((img - img.min()) / (img.max() - img.min())).astype(np.float32)


def shifted_pair(shape: tuple[int, ...], shift: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(fixed, moving) with moving(x) = fixed(x - shift): the true displacement is u = shift (voxels)."""
    fixed = blobs(shape, seed=1)
    return fixed, ndimage.shift(fixed, shift, order=3, mode="nearest")


def affine_pair(shape: tuple[int, int], matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fixed, moving, true disp_vox) with moving(A x + c) = fixed(x) about the centre, A = ``matrix``."""
    fixed = blobs(shape, seed=1)
    centre = (np.asarray(shape) - 1) / 2
    inverse = np.linalg.inv(matrix)
    moving = ndimage.affine_transform(fixed, inverse, offset=centre - inverse @ centre, order=3, mode="nearest")
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    disp = np.einsum("rc,c...->r...", matrix - np.eye(2), grid - centre[:, None, None])
    return fixed, moving, disp


def brain_truth_pair(data: Path, max_disp_mm: float = 8.0, seed: int = 0):
    """Axial slice 112 of aligned-brains subject-a (160x192, 1 mm) and a copy deformed by a known smooth field.

    Returns the :class:`TruthPair` (fixed, moving, disp_vox, fixed/moving aseg labels) and the 30 evaluation labels.
    """
    root = data / "aligned-brains"
    image = extract_slice(load_image(root / "subject-a" / "t1w.nii.gz"), axis=2, index=112)
    labels = extract_slice(load_image(root / "subject-a" / "aseg.nii.gz", "labels"), axis=2, index=112)
    rng = np.random.default_rng(seed)
    disp = synth.random_smooth_displacement(image.shape, image.spacing, rng, max_disp_mm=max_disp_mm)
    pair = deform_with_truth(image, disp, rng, labels=labels, noise_std=0.01)
    evaluation = [int(v) for v in (root / "eval-labels.txt").read_text().split()]
    return pair, evaluation


def brain_subject_pair(data: Path) -> tuple[Image, Image, Image, Image, list[int]]:
    """Axial slice 112 of subject-a (fixed) and subject-b (moving), images and aseg labels, and the 30 labels."""
    root = data / "aligned-brains"

    def load(subject: str, name: str, kind: str) -> Image:
        return extract_slice(load_image(root / subject / name, kind), axis=2, index=112)

    labels = [int(v) for v in (root / "eval-labels.txt").read_text().split()]
    return (load("subject-a", "t1w.nii.gz", "image"), load("subject-b", "t1w.nii.gz", "image"),
            load("subject-a", "aseg.nii.gz", "labels"), load("subject-b", "aseg.nii.gz", "labels"), labels)


def lung_truth_pair(data: Path, max_disp_mm: float = 10.0, seed: int = 0):
    """The small real lung CT (57x78x64 at 2.73x2.73x5 mm, HU clipped to [-1000, 0] -> [0, 1]) and a copy
    deformed by a known smooth field (``TruthPair``)."""
    ct = load_image(data / "lung-ct-small" / "3DCT_lung_baseline_small.mha")
    image = ct.with_data(((np.clip(ct.data, -1000, 0) + 1000) / 1000).astype(np.float32))
    rng = np.random.default_rng(seed)
    disp = synth.random_smooth_displacement(image.shape, image.spacing, rng, grid_spacing_mm=60.0,
                                            max_disp_mm=max_disp_mm, smooth_sigma_mm=8.0)
    return deform_with_truth(image, disp, rng, noise_std=0.01)


def body_mask(image: Image) -> np.ndarray:
    """Voxels inside the body of a lung CT prepared by :func:`lung_truth_pair` (not air outside), eroded by 2."""
    body = ndimage.binary_fill_holes(image.data > 0.3)
    return ndimage.binary_erosion(body, iterations=2)
