"""RegNet (Sokooti et al., MICCAI 2017; arXiv:1908.10235), 2D and 3D: a multi-scale patch CNN
trained on synthetic deformations, supervised by the known displacement (no similarity metric).

Network
-------
The published RegNet reads a fixed and a moving patch at two scales (29^3 voxels at the original
resolution and 54^3 voxels downsampled by 2 to 27^3) and predicts the displacement of the patch
centre. Here both pathways use *valid* convolutions, so the same weights predict one displacement
per voxel of any crop or whole image (the dense, fully convolutional form of sliding the patch pair
over every voxel: registration needs every voxel, and one pass shares the overlapping work):

* fine pathway: ``L = (patch_size - 1) / 2`` 3x3(x3) convolutions (batch normalisation and
  ``activations``: ``leaky`` LeakyReLU 0.2 (default) or ``published`` ReLU as RegNet's code, ``width`` features) on ``cat([fixed, moving])``: each output
  sees a ``patch_size`` patch (29 published);
* context pathway: 2x average pooling (downsampling by 2) then ``L`` 3x3(x3) convolutions and
  nearest 2x upsampling: each output sees ``patch_size`` coarse voxels, a ``2 * patch_size + 2``
  voxel context (60 for 29; published 54);
* the fine features (cropped to the context's output) and the context features are concatenated
  and mapped by three 1x1(x1) convolutions (RegNet's fully connected layers; LeakyReLU 0.2,
  or ELU with ``activations=published`` as in its code) to ``ndim``
  displacement components in voxels. The last starts at N(0, 1e-5) weights and zero bias (the
  untrained network predicts about the identity).

A crop of ``n`` voxels per axis (``n`` even) gives ``n - 2 * halo`` outputs, ``halo = 2 L =
patch_size - 1`` (:func:`halo`). The pooling makes the network depend on the parity of a voxel's
position, so training crops start at even voxels of the padded image and registration keeps that
phase: both images are padded by ``halo`` (border values repeated) and predicted in tiles of
``tile`` output voxels per axis starting at even voxels (:func:`predict_dense`).

Training pairs (:meth:`RegNet.sample_batch`)
--------------------------------------------
For each of ``batch_size`` pairs a training image ``I`` and a synthetic displacement ``u`` are drawn
(``synth`` picks among RegNet's categories, one at random per pair; :mod:`registration_core.data.synth`):

* ``single``: :func:`~registration_core.data.synth.random_smooth_displacement`, control spacing
  ``grid_spacing_mm * {1, 1.5, 2}``, Gaussian sigma 5 mm;
* ``mixed``: :func:`~registration_core.data.synth.mixed_frequency_displacement` with levels
  ``(2, 1, 0.5) * grid_spacing_mm`` and regions seeded by the edges of ``I`` (RegNet's recipe);
* ``respiratory`` (3D): :func:`~registration_core.data.synth.respiratory_displacement` with a
  cranio-caudal shift of the drawn maximum, inside the training label map when there is one
  (a lung mask), else the whole image (the field's window, see below).

The largest magnitude is drawn in ``[max_disp_mm / 2, max_disp_mm]``. The fields are plain
displacements (RegNet normalises, it does not integrate): they are made to be sampled, not inverted.
The pair is built so that the target is exactly our convention (fixed point ``x`` -> moving point
``x + t(x)``) without inverting anything:

    ``fixed = I o (id + u)``, ``moving = I o (id + s)``, ``t = u - s``

(``s`` a random sub-voxel translation in ``U(-0.5, 0.5)`` voxels per axis, so that both images
are interpolated alike): ``moving(x + t(x)) = I(x + u(x)) = fixed(x)``. Gaussian noise of
``noise_std`` times the image's range is added to both. ``patches_per_pair`` crops of
``output_patch + 2 * halo`` voxels per axis are cut from each pair (images padded like at
registration), with the target on their central ``output_patch`` voxels. Many pairs per step
matter more than many crops per pair (the batch statistics and the gradient then span several
fields): on the test textures, 4 pairs x 2 crops cut the held-out error by about 45 % in 300
steps where 2 pairs x 4 crops (the same work) cut it by 25 %.

With ``field_window`` > 0 each field is drawn on a random box of that many voxels per axis
(0 outside it, the box's part of the mask for respiratory motion), which bounds the cost of a
pair on large 3D volumes (a single-frequency pair on a 160x192x224 brain takes ~15 s on one
CPU core, mostly the field); the network only ever sees crops of ``output_patch + 2 * halo``
voxels anyway.

Loss: ``mean |(prediction - t) * spacing|^2`` (mm^2, squared end-point error); the logged
``epe_mm`` is the mean end-point error in mm. Instance optimisation (``io_steps``, no truth at
registration): ``1 - mean(local NCC^2)`` (window ``ncc_window``) of the fixed image and the warped
moving one, plus ``io_smooth`` times the diffusion regulariser of the displacement.

Still different from the 2019 RegNet (issue list): one stage, not the 3-stage cascade
(downsampling 4, 2, 1; maximum deformation 20, 15, 7 mm); no class-balanced patch sampling
(displacement bins); squared end-point error, not Huber + 0.1 x bending energy; fields up to
``max_disp_mm=8`` (DIR-Lab motions reach ~30 mm); LeakyReLU 0.2 by default: on 14 real brain slices,
300 steps, unseen slices with known fields up to 8 mm (``benchmarks/learned_synth_2d.py``), Dice
0.438 -> 0.554 with LeakyReLU and 0.462 with the authors' ReLU/ELU (one seed each).

Conventions: images (B, 1, *spatial) float32; displacements (B, ndim, *spatial) in voxels of the
fixed grid, channel ``d`` along array axis ``d`` (:mod:`registration_core.core.spatial`).
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from registration_core.core.io import Image
from registration_core.core.losses import LocalNCC, diffusion_loss
from registration_core.core.params import Param
from registration_core.core.spatial import warp
from registration_core.data import synth
from registration_core.errors import InputError
from registration_core.methods.training import Batch, LearnedMethod, TrainingSet, common_params, param_schema

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_AVG_POOL = {2: nn.AvgPool2d, 3: nn.AvgPool3d}
_BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_PAD_MODE = "replicate"

SYNTH_CHOICES = ("single", "mixed", "single+mixed", "respiratory", "single+mixed+respiratory")
"""Values of the ``synth`` parameter: the categories of synthetic deformation drawn, ``+``-separated."""

SINGLE_SPACING_FACTORS = (1.0, 1.5, 2.0)
"""Single-frequency control spacings, in units of ``grid_spacing_mm``."""
MIXED_SPACING_FACTORS = (2.0, 1.0, 0.5)
"""Mixed-frequency levels, in units of ``grid_spacing_mm``."""
SINGLE_SMOOTH_SIGMA_MM = 5.0
FLOW_INIT_STD = 1e-5


# -- network ----------------------------------------------------------------------------------


def _activation(kind: str, head: bool) -> nn.Module:
    """LeakyReLU 0.2 (``leaky``), or RegNet's code: ReLU in the convolutions, ELU in the fully connected part."""
    if kind == "leaky":
        return nn.LeakyReLU(0.2)
    return nn.ELU() if head else nn.ReLU()


def _conv_stack(ndim: int, in_channels: int, width: int, layers: int, kind: str = "leaky") -> list[nn.Module]:
    """``layers`` valid 3x3(x3) convolutions + batch normalisation + activation, ``width`` features."""
    modules: list[nn.Module] = []
    for layer in range(layers):
        conv = _CONV[ndim](in_channels if layer == 0 else width, width, 3, bias=False)
        modules += [conv, _BATCH_NORM[ndim](width), _activation(kind, head=False)]
    return modules


def halo(patch_size: int) -> int:
    """Voxels per side the network reads beyond its outputs: ``2 L`` for ``L = (patch_size - 1) / 2`` layers."""
    return 2 * ((patch_size - 1) // 2)


def _center_crop(x: torch.Tensor, margin: int) -> torch.Tensor:
    """Drop ``margin`` voxels on both ends of every spatial axis of (B, C, *spatial)."""
    return x[(slice(None), slice(None), *[slice(margin, n - margin) for n in x.shape[2:]])]


def _box(corner: Sequence[int], size: Sequence[int], offset: int = 0) -> tuple[slice, ...]:
    """Index of the box ``[corner + offset, corner + offset + size)`` on (B, C, *spatial) tensors."""
    return (slice(None), slice(None), *[slice(c + offset, c + offset + n) for c, n in zip(corner, size)])


class RegNetCNN(nn.Module):
    """RegNet's two-pathway CNN in fully convolutional form; see the module docstring.

    ``forward(pair)``: ``cat([fixed, moving])`` (B, 2, *n) with every ``n`` even -> displacement
    (B, ndim, *(n - 2 * halo)) in voxels; output voxel ``m`` belongs to input voxel ``m + halo``.
    """

    def __init__(self, ndim: int, patch_size: int, width: int, activations: str = "leaky") -> None:
        super().__init__()
        self.layers = (patch_size - 1) // 2
        self.halo = halo(patch_size)
        self.fine = nn.Sequential(*_conv_stack(ndim, 2, width, self.layers, activations))
        self.context = nn.Sequential(_AVG_POOL[ndim](2), *_conv_stack(ndim, 2, width, self.layers, activations))
        head = nn.Sequential(
            _CONV[ndim](2 * width, 2 * width, 1), _activation(activations, head=True),
            _CONV[ndim](2 * width, width, 1), _activation(activations, head=True),
            _CONV[ndim](width, ndim, 1),
        )
        nn.init.normal_(head[-1].weight, mean=0.0, std=FLOW_INIT_STD)
        nn.init.zeros_(head[-1].bias)
        self.head = head

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        if any(n % 2 for n in pair.shape[2:]):
            raise ValueError(f"RegNetCNN needs even input sizes, got {tuple(pair.shape[2:])}")
        context = F.interpolate(self.context(pair), scale_factor=2.0, mode="nearest")
        fine = _center_crop(self.fine(pair), self.layers)
        return self.head(torch.cat([fine, context], dim=1))


def predict_dense(model: RegNetCNN, fixed: torch.Tensor, moving: torch.Tensor, tile: int) -> torch.Tensor:
    """Displacement (B, ndim, *spatial) in voxels for images (B, 1, *spatial), tile by tile.

    Both images are padded by ``model.halo`` (border values repeated, as for the training crops; one
    more voxel at the end of an odd axis); each tile of at most ``tile`` (rounded down to even)
    output voxels per axis starts at an even voxel and reads its ``halo``-wide surroundings, so the
    result equals one pass over the whole image. Differentiable (instance optimisation).
    """
    shape = fixed.shape[2:]
    even = [n + n % 2 for n in shape]
    margin = model.halo
    pads = [p for n in reversed(shape) for p in (margin, margin + n % 2)]
    padded = F.pad(torch.cat([fixed, moving], dim=1), pads, mode=_PAD_MODE)
    step = max(2, tile - tile % 2)
    out = fixed.new_zeros((fixed.shape[0], len(shape), *even))
    for corner in itertools.product(*[range(0, n, step) for n in even]):
        size = [min(step, n - c) for c, n in zip(corner, even)]
        out[_box(corner, size)] = model(padded[_box(corner, [n + 2 * margin for n in size])])
    return out[_box([0] * len(shape), shape)]


# -- synthetic training pairs -----------------------------------------------------------------


def synthetic_displacement(
    category: str, image: Image, rng: np.random.Generator, max_disp_mm: float, grid_spacing_mm: float,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """A random displacement (ndim, *shape) float32 in voxels of ``image``'s grid, largest magnitude ``max_disp_mm``.

    ``category``: ``single``, ``mixed`` (regions from ``image``'s edges) or ``respiratory`` (3D;
    ``mask`` bounds the lungs); see the module docstring for the settings.
    """
    if category == "single":
        spacing = grid_spacing_mm * float(rng.choice(SINGLE_SPACING_FACTORS))
        return synth.random_smooth_displacement(
            image.shape, image.spacing, rng, grid_spacing_mm=spacing, max_disp_mm=max_disp_mm,
            smooth_sigma_mm=SINGLE_SMOOTH_SIGMA_MM, diffeomorphic=False,
        )
    if category == "mixed":
        return synth.mixed_frequency_displacement(
            image.shape, image.spacing, rng, grid_spacings_mm=[grid_spacing_mm * f for f in MIXED_SPACING_FACTORS],
            max_disp_mm=max_disp_mm, structure=image.data, diffeomorphic=False,
        )
    if category == "respiratory":
        return synth.respiratory_displacement(image, rng, lung_mask=mask, shift_mm=max_disp_mm)
    raise InputError(f"unknown synthetic deformation category {category!r}; allowed: single, mixed, respiratory")


def synthetic_pair(
    image: torch.Tensor, disp_vox: torch.Tensor, shift_vox: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fixed, moving, target) from an image (1, 1, *S), a displacement (1, ndim, *S) and a shift (ndim,), voxels.

    ``fixed = I o (id + u)``, ``moving = I o (id + s)``, target ``t = u - s`` (1, ndim, *S): the fixed
    point ``x`` corresponds to the moving point ``x + t(x)``.
    """
    shift = shift_vox.to(disp_vox).view(1, -1, *([1] * (disp_vox.dim() - 2))).expand_as(disp_vox)
    return warp(image, disp_vox), warp(image, shift), disp_vox - shift


def window_image(image: Image, corner: Sequence[int], size: Sequence[int]) -> Image:
    """The box ``[corner, corner + size)`` (voxels per axis) of ``image`` with its own affine (same mm positions)."""
    box = tuple(slice(c, c + n) for c, n in zip(corner, size))
    affine = np.array(image.affine, dtype=np.float64)
    affine[:3, 3] += affine[:3, : len(corner)] @ np.asarray(corner, dtype=np.float64)
    return Image(np.ascontiguousarray(image.data[box]), affine)


def _even_corner(rng: np.random.Generator, extent: Sequence[int], size: Sequence[int]) -> list[int]:
    """A random corner with even coordinates so that ``[corner, corner + size)`` fits in ``extent``."""
    return [2 * int(rng.integers(0, (n - m) // 2 + 1)) for n, m in zip(extent, size)]


# -- method -----------------------------------------------------------------------------------


def _odd(name: str, default: int, help: str) -> Param:
    return Param(name, int, default, help, minimum=3, parity="odd")


PARAMS = param_schema(
    *common_params(steps=1000, lr=1e-3, io_lr=1e-4, batch_size=4),
    Param("synth", str, "single+mixed", "synthetic deformation categories drawn for training", choices=SYNTH_CHOICES),
    Param("max_disp_mm", float, 8.0, "largest displacement of the training fields (mm)", minimum=0.0, exclusive_minimum=True),
    Param("grid_spacing_mm", float, 40.0, "B-spline control spacing of the training fields (mm)", minimum=0.0, exclusive_minimum=True),
    _odd("patch_size", 29, "fine patch per axis (voxels); the context sees patch_size voxels at half resolution"),
    Param("width", int, 16, "features per convolution", minimum=1),
    Param("activations", str, "leaky", "leaky: LeakyReLU 0.2; published: ReLU, ELU in the 1x1 head (RegNet's code)",
          choices=("leaky", "published")),
    Param("output_patch", int, 24, "output voxels per axis of a training crop", minimum=2, parity="even"),
    Param("patches_per_pair", int, 2, "training crops cut from each synthetic pair", minimum=1),
    Param("field_window", int, 0, "voxels per axis of the box each training field lives on (0: the whole image)", minimum=0),
    Param("noise_std", float, 0.01, "Gaussian noise added to training pairs (fraction of the image range)", minimum=0.0),
    Param("tile", int, 128, "output voxels per axis predicted at once at registration (even)", minimum=2),
    _odd("ncc_window", 9, "local NCC window of instance optimisation (voxels)"),
    Param("io_smooth", float, 1.0, "weight of the diffusion regulariser in instance optimisation", minimum=0.0),
)


class RegNet(LearnedMethod):
    """RegNet: supervised multi-scale patch CNN on synthetic deformations; see the module docstring."""

    name = "regnet"
    params = PARAMS

    def resolve_params(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        values = super().resolve_params(raw)
        if 0 < values["field_window"] < values["output_patch"]:
            raise InputError(
                f"method 'regnet': parameter 'field_window'={values['field_window']} is smaller than "
                f"'output_patch'={values['output_patch']}; use 0 (whole image) or at least output_patch"
            )
        return values

    def build_model(self, shape: tuple[int, ...], params: Mapping[str, Any]) -> nn.Module:
        if "respiratory" in params["synth"] and len(shape) != 3:
            raise InputError(f"method 'regnet': parameter 'synth'={params['synth']} needs 3D images, got {len(shape)}D")
        if min(shape) < params["output_patch"]:
            raise InputError(
                f"method 'regnet': parameter 'output_patch'={params['output_patch']} exceeds the image shape {tuple(shape)}"
            )
        return RegNetCNN(len(shape), params["patch_size"], params["width"], params["activations"])

    def sample_batch(self, data: TrainingSet, rng: np.random.Generator, params: Mapping[str, Any], device: torch.device) -> Batch:
        """``batch_size`` synthetic pairs x ``patches_per_pair`` crops: ``fixed``/``moving``
        (N, 1, *(output_patch + 2 halo)), ``disp`` (N, ndim, *output_patch) voxels, ``spacing_mm`` (ndim,).

        Each pair's field lives on a random window of at most ``field_window`` voxels per axis (the
        whole image when 0), is 0 around it, and is applied to the window and its ``halo``-wide
        surroundings (images padded by repeating their border values, as at registration).
        """
        margin = halo(params["patch_size"])
        categories = params["synth"].split("+")
        ndim = len(data.shape)
        window = [min(n, params["field_window"] or n) for n in data.shape]
        size = [params["output_patch"]] * ndim
        padded = F.pad(data.images, [margin] * (2 * ndim), mode=_PAD_MODE)
        inputs, targets = [], []
        for _ in range(params["batch_size"]):
            index = int(rng.integers(len(data)))
            corner = _even_corner(rng, data.shape, window)
            category = categories[int(rng.integers(len(categories)))]
            max_disp = params["max_disp_mm"] * float(rng.uniform(0.5, 1.0))
            mask = None if data.labels is None else data.labels[index, 0].numpy()[_box(corner, window)[2:]] > 0
            mask = mask if mask is not None and mask.any() else None  # a window beside the lungs: its whole extent
            disp = synthetic_displacement(
                category, window_image(data.reference.with_data(data.images[index, 0].numpy()), corner, window),
                rng, max_disp, params["grid_spacing_mm"], mask,
            )
            disp_region = F.pad(torch.from_numpy(disp)[None], [margin] * (2 * ndim))  # 0 around the window
            region = padded[index : index + 1][_box(corner, [n + 2 * margin for n in window])]
            shift = torch.from_numpy(rng.uniform(-0.5, 0.5, size=ndim))
            fixed, moving, target = synthetic_pair(region, disp_region, shift)
            pair = torch.cat([fixed, moving], dim=1)
            noise_scale = params["noise_std"] * float(data.images[index].max() - data.images[index].min())
            pair = pair + noise_scale * torch.from_numpy(rng.standard_normal(pair.shape).astype(np.float32))
            for _ in range(params["patches_per_pair"]):
                crop = _even_corner(rng, window, size)
                inputs.append(pair[_box(crop, [n + 2 * margin for n in size])])
                targets.append(target[_box(crop, size, offset=margin)])
        crops = torch.cat(inputs)
        spacing = torch.tensor(data.reference.spacing, dtype=torch.float32)
        batch = {"fixed": crops[:, :1], "moving": crops[:, 1:], "disp": torch.cat(targets), "spacing_mm": spacing}
        return {key: value.to(device) for key, value in batch.items()}

    def loss(self, model: nn.Module, batch: Batch, params: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean squared end-point error (mm^2) of the displacements predicted on the crops' central voxels."""
        prediction = model(torch.cat([batch["fixed"], batch["moving"]], dim=1))
        spacing = batch["spacing_mm"].view(1, -1, *([1] * (prediction.dim() - 2)))
        squared = (((prediction - batch["disp"]) * spacing) ** 2).sum(dim=1)
        total = squared.mean()
        return total, {"mse_mm2": total, "epe_mm": squared.sqrt().mean()}

    def predict(self, model: nn.Module, fixed: torch.Tensor, moving: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
        return predict_dense(model, fixed, moving, params["tile"])

    def instance_loss(self, model: nn.Module, batch: Batch, params: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``1 - mean(local NCC^2)`` of fixed and warped moving + ``io_smooth`` x diffusion (no truth at registration).

        Batch normalisation keeps its running statistics (evaluation mode) so that the refined
        network stays the fully convolutional one the tiles assume.
        """
        model.eval()
        disp = self.predict(model, batch["fixed"], batch["moving"], params)
        ncc = LocalNCC(batch["fixed"], params["ncc_window"])(warp(batch["moving"], disp))
        smooth = diffusion_loss(disp)
        return ncc + params["io_smooth"] * smooth, {"ncc": ncc, "diffusion": smooth}


METHOD = RegNet()
