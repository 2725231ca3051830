"""RegNet (Sokooti et al., MICCAI 2017; arXiv:1908.10235), 2D and 3D: a cascade of multi-scale
patch CNNs trained on synthetic deformations, supervised by the known displacement (no similarity
metric).

Network (one per stage)
-----------------------
The published RegNet reads a fixed and a moving patch at several scales and predicts the
displacement of the patch's central voxels. Here both pathways of the 2017 design use *valid*
convolutions, so the same weights predict one displacement per voxel of any crop or whole image
(the dense, fully convolutional form of sliding the patch pair over every voxel: registration
needs every voxel, and one pass shares the overlapping work):

* fine pathway: ``L = (patch_size - 1) / 2`` 3x3(x3) convolutions, each followed by batch
  normalisation and an activation (``width`` features) on ``cat([fixed, moving])``: each output
  sees a ``patch_size`` patch (29 in 2017);
* context pathway: 2x average pooling (downsampling by 2) then ``L`` such convolutions and nearest
  2x upsampling: each output sees ``patch_size`` coarse voxels, a ``2 * patch_size + 2`` voxel
  context (60 for 29; 2017: 54);
* the fine features (cropped to the context's output) and the context features are concatenated
  and mapped by three 1x1(x1) convolutions (RegNet's fully connected part) to ``ndim`` displacement
  components in voxels. The last starts at N(0, 1e-5) weights and zero bias (the untrained network
  predicts about the identity).

``activations``: ``leaky`` (default) LeakyReLU 0.2 everywhere; ``published`` as the authors' code
(``functions/network/crop4_connection.py``, ``decimation4.py``): ReLU after every 3x3x3
convolution of the pathways and ELU in the fully connected part (no activation on the output).

A crop of ``n`` voxels per axis (``n`` even) gives ``n - 2 * halo`` outputs, ``halo = 2 L =
patch_size - 1`` (:func:`halo`). The pooling makes the network depend on the parity of a voxel's
position, so training crops start at even voxels of the padded image and registration keeps that
phase: both images are padded by ``halo`` (border values repeated) and predicted in tiles of
``tile`` output voxels per axis starting at even voxels (:func:`predict_dense`).

Stages (:class:`RegNetCascade`, :func:`predict_cascade`)
------------------------------------------------------
``stages`` lists downsampling factors, coarse to fine (the 2019 RegNet: 4, 2, 1), one network per
factor. A stage's grid keeps voxel ``k`` on voxel ``factor * k`` of the image; images are shrunk by
RegNet's kernel with stride ``factor`` (the authors' ``beta3`` of the L1 distance, ``4 factor - 1``
taps per axis; :func:`~registration_core.methods.regnet_sampling.shrink`), and the training fields
of a stage are drawn on the shrunk images, as the authors do. At registration stage 1 predicts on the
shrunk pair; its field is brought to the full grid (values times ``factor``, linear interpolation)
and the moving image is warped by it; each later stage predicts the residual ``t`` between the
fixed image and the warped moving one, and the fields are composed: with ``u`` the field so far
(fixed point ``x`` -> moving point ``x + u(x)``, voxels of the fixed grid),
``u <- t + u o (id + t)`` (the warped moving image at ``x + t(x)`` is the moving image at
``y + u(y)``, ``y = x + t(x)``). ``stages=1`` is one network at full resolution.

Training pairs (:meth:`RegNet.sample_batch`)
--------------------------------------------
Every stage is trained on its own pairs, as RegNet trains each stage's network on its own synthetic
fields: the stages share nothing, so one Adam step on the sum of their losses is one Adam step of
each network. For a stage of factor ``f`` and maximum ``M`` (``stage_max_disp_mm``, or
``max_disp_mm`` for every stage) each of ``batch_size`` pairs draws a training image ``I``
shrunk by ``f`` and a synthetic displacement ``u`` on that grid (sizes in mm, values in its voxels;
``synth`` picks among RegNet's categories, one at random per pair; :mod:`registration_core.data.synth`):

* ``single``: :func:`~registration_core.data.synth.random_smooth_displacement`, control spacing
  ``grid_spacing_mm * {1, 1.5, 2}``, Gaussian sigma 5 mm;
* ``mixed``: :func:`~registration_core.data.synth.mixed_frequency_displacement` with levels
  ``(2, 1, 0.5) * grid_spacing_mm`` and regions seeded by the edges of ``I`` (RegNet's recipe);
* ``respiratory`` (3D): :func:`~registration_core.data.synth.respiratory_displacement` with a
  cranio-caudal shift of the drawn maximum, inside the training label map when there is one
  (a lung mask), else the whole image (the field's window, see below).

The largest magnitude is drawn in ``[M / 2, M]``. The fields are plain displacements (RegNet
normalises, it does not integrate): they are made to be sampled, not inverted. The pair is built so
that the target is exactly our convention (fixed point ``x`` -> moving point ``x + t(x)``) without
inverting anything:

    ``fixed = I o (id + u)``, ``moving = I o (id + s)``, ``t = u - s``

(``s`` a random sub-voxel translation in ``U(-0.5, 0.5)`` voxels per axis, so that both images
are interpolated alike): ``moving(x + t(x)) = I(x + u(x)) = fixed(x)``. Gaussian noise of
``noise_std`` times the image's range is added to both. ``patches_per_pair`` crops of
``output_patch + 2 * halo`` voxels per axis are cut from each pair (images padded like at
registration), with the target on their central ``output_patch`` voxels. ``balance=none`` places
the crops uniformly; ``balance=classes`` centres them on voxels of RegNet's displacement classes in
turn, so that the classes are equally represented over the batch
(:func:`~registration_core.methods.regnet_sampling.class_bins_mm`: for ``M`` up to 5 mm one class,
up to 7 mm ``[0, 2), [2, M)``, up to 15 mm ``[0, 1.5), [1.5, 4), [4, M)``, beyond
``[0, 1.5), [1.5, 8), [8, M)``, on the largest absolute component of ``t`` in mm at the crop's
centre; a class absent from a pair's field is replaced by the next one present). Many pairs per
step matter more than many crops per pair (the batch statistics and the gradient then span several
fields): on the test textures, 4 pairs x 2 crops cut the held-out error by about 45 % in 300 steps
where 2 pairs x 4 crops (the same work) cut it by 25 %.

With ``field_window`` > 0 each field is drawn on a random box of that many stage voxels per axis
(0 outside it, the box's part of the mask for respiratory motion), which bounds the cost of a
pair on large 3D volumes (a single-frequency pair on a 160x192x224 brain takes ~15 s on one
CPU core, mostly the field); the network only ever sees crops of ``output_patch + 2 * halo``
voxels anyway.

Loss (per stage, summed over stages; displacements in mm, ``p`` predicted, ``t`` true):
``loss=mse``: ``mean |p - t|^2`` (mm^2, squared end-point error, logged ``mse_mm2``);
``loss=huber``: the 2019 RegNet's ``mean huber(p - t)`` over voxels and components, delta 1 mm
(``tf.losses.huber_loss``'s default on the authors' mm fields; mm, logged ``huber``). Both add
``bending_weight`` (2019: 0.1) times the bending energy of ``p`` in mm with derivatives per voxel
of the stage grid, as the authors' code (its ``VoxelSize`` is 1 at every stage; logged
``bending``; :func:`~registration_core.core.losses.bending_energy`). ``epe_mm`` is the mean
end-point error in mm. With several stages every term is logged per stage with the suffix
``_s<factor>`` (``epe_mm_s4``). Instance optimisation (``io_steps``, no truth at registration):
``1 - mean(local NCC^2)`` (window ``ncc_window``) of the fixed image and the warped moving one,
plus ``io_smooth`` times the diffusion regulariser of the cascade's displacement.

Presets: ``default`` (CPU budgets: one stage, squared end-point error, uniform crops, LeakyReLU;
kept, see the measurements below) and ``published`` (the 2019 settings: stages 4, 2, 1 with maxima 20, 15,
7 mm, Huber + 0.1 x bending energy, class-balanced crops, ReLU/ELU, learning rate 1e-3, 15 crops per
step from 15 pairs, 20 output voxels per axis). The authors publish no step count (their
``MaxIterations`` is 10^7; training was stopped by hand), so ``published`` keeps ``steps``.

Still different from the 2019 RegNet, and why:

* the network is the 2017 two-pathway design made fully convolutional (average pooling, one
  ``width``, 1x1 fully connected part without batch normalisation), not the 2019 ``crop4`` /
  ``decimation4`` designs (three resolutions, dilated convolutions, widths 16-120, 3x3x3 fully
  connected layers, input 101^3 / 105^3 -> 21^3 outputs, in-network rounded Gaussian noise): the
  fully convolutional form gives dense fields in one pass on any image;
* crops of ``output_patch`` (even, 20 in ``published``) outputs, not 21^3 around a centre voxel;
  each step draws fresh fields instead of reusing chunks of stored ones (16-80 images x 5-50
  patches per image), so a batch spans ``batch_size`` fields;
* one ``grid_spacing_mm`` (times 1, 1.5, 2) at every stage; the authors' single-frequency control
  spacings grow with the stage's maximum (20-50 mm for 7 mm, 35-60 mm for 15 mm, 45-80 mm for
  20 mm), and each image gets 14 fields (4 respiratory, 5 single, 4 mixed, 1 zero), also drawn
  on synthetically deformed copies of it;
* intensity augmentation is Gaussian noise on both images (``noise_std``); the authors also
  apply a sponge intensity model and noise to the deformed image and add rounded Gaussian noise
  inside the network;
* classes by the largest component for every dimension (the authors' 3D code asks all three
  components to pass the lower edge, leaving voxels with mixed components out of every class) and
  the last class open above; no torso mask or border margin beyond the crop's fit;
* stages are composed (``u <- t + u o (id + t)``); the authors' code adds the upsampled fields,
  equal to first order. The moving image is warped on the full grid and then shrunk (the authors
  warp the shrunk moving image); images are padded by repeating the border, not by a constant;
* defaults (not ``published``): one stage, squared end-point error, uniform crops, fields up to
  ``max_disp_mm=8`` (DIR-Lab motions reach ~30 mm) and LeakyReLU 0.2, kept as measured on a CPU
  budget: on 14 real brain slices, 300 steps, unseen slices with known fields up to 8 mm
  (``benchmarks/learned_synth_2d.py``, one thread), Dice from 0.438 (identity) to 0.554 with
  LeakyReLU and 0.462 with the authors' ReLU/ELU (one seed each). Measured again with this
  module (seeds 0 and 1): default 0.520 and 0.597 (94 s); ``loss=huber bending_weight=0.1``
  0.495 (seed 0); ``balance=classes`` 0.636 and 0.499; ``stages=4x2x1
  stage_max_disp_mm=20x15x7 output_patch=20`` 0.630 and 0.641 (210 s). The cascade is the one
  change better on both seeds, at twice the training time; the acceptance budget (2000 steps)
  was not rerun, so the defaults stay.

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

from registration_core.core.losses import LocalNCC, bending_energy, diffusion_loss
from registration_core.core.params import Param, value_text
from registration_core.core.spatial import compose, warp
from registration_core.errors import InputError
from registration_core.methods.regnet_sampling import (
    PAD_MODE,
    box,
    sample_stage_crops,
    shrink,
    shrunk_shape,
    upsample_displacement,
)
from registration_core.methods.training import Batch, LearnedMethod, TrainingSet, common_params, param_schema

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_AVG_POOL = {2: nn.AvgPool2d, 3: nn.AvgPool3d}
_BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}

SYNTH_CHOICES = ("single", "mixed", "single+mixed", "respiratory", "single+mixed+respiratory")
"""Values of the ``synth`` parameter: the categories of synthetic deformation drawn, ``+``-separated."""

FLOW_INIT_STD = 1e-5
HUBER_DELTA_MM = 1.0
"""Huber delta of the 2019 RegNet: ``tf.losses.huber_loss``'s default 1 on displacements in mm."""


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


class RegNetCascade(nn.Module):
    """One :class:`RegNetCNN` per stage: ``stages[i]`` reads images shrunk by ``factors[i]``
    (coarse to fine); the state dict holds every stage (``stages.<i>.*``)."""

    def __init__(self, ndim: int, factors: Sequence[int], patch_size: int, width: int, activations: str = "leaky") -> None:
        super().__init__()
        self.factors = tuple(int(f) for f in factors)
        self.stages = nn.ModuleList(RegNetCNN(ndim, patch_size, width, activations) for _ in self.factors)


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
    padded = F.pad(torch.cat([fixed, moving], dim=1), pads, mode=PAD_MODE)
    step = max(2, tile - tile % 2)
    out = fixed.new_zeros((fixed.shape[0], len(shape), *even))
    for corner in itertools.product(*[range(0, n, step) for n in even]):
        size = [min(step, n - c) for c, n in zip(corner, even)]
        out[box(corner, size)] = model(padded[box(corner, [n + 2 * margin for n in size])])
    return out[box([0] * len(shape), shape)]


def predict_cascade(model: RegNetCascade, fixed: torch.Tensor, moving: torch.Tensor, tile: int) -> torch.Tensor:
    """Displacement (B, ndim, *spatial) in voxels of the fixed grid for images (B, 1, *spatial).

    Stage by stage, coarse to fine: predict ``t`` on the pair shrunk by the stage's factor (the
    moving image warped by the field so far), bring it to the full grid and compose,
    ``u <- t + u o (id + t)``. One stage of factor 1 is :func:`predict_dense`. Differentiable.
    """
    disp: torch.Tensor | None = None
    for factor, network in zip(model.factors, model.stages):
        moved = moving if disp is None else warp(moving, disp)
        coarse = predict_dense(network, shrink(fixed, factor), shrink(moved, factor), tile)
        step = upsample_displacement(coarse, factor, fixed.shape[2:])
        disp = step if disp is None else compose(disp, step)
    assert disp is not None
    return disp


# -- loss -------------------------------------------------------------------------------------


def displacement_loss(
    prediction: torch.Tensor, target: torch.Tensor, spacing_mm: torch.Tensor, loss: str, bending_weight: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Supervised loss of a displacement ``prediction`` against the true ``target`` (N, ndim, *S),
    both in voxels of a grid of ``spacing_mm`` (ndim,); see the module docstring.

    ``mse``: mean squared end-point error (mm^2); ``huber``: mean Huber (delta
    :data:`HUBER_DELTA_MM`) of the error's components in mm. Plus ``bending_weight`` times the
    bending energy of the prediction in mm (per voxel^4). Returns (total, terms).
    """
    scale = spacing_mm.view(1, -1, *([1] * (prediction.dim() - 2)))
    predicted_mm, target_mm = prediction * scale, target * scale
    squared = (predicted_mm - target_mm).pow(2).sum(dim=1)
    if loss == "huber":
        total = F.huber_loss(predicted_mm, target_mm, delta=HUBER_DELTA_MM)
        terms = {"huber": total}
    else:
        total = squared.mean()
        terms = {"mse_mm2": total}
    if bending_weight > 0:
        bending = bending_energy(predicted_mm)
        total = total + bending_weight * bending
        terms["bending"] = bending
    terms["epe_mm"] = squared.sqrt().mean()
    return total, terms


# -- method -----------------------------------------------------------------------------------


def _odd(name: str, default: int, help: str) -> Param:
    return Param(name, int, default, help, minimum=3, parity="odd")


PARAMS = param_schema(
    *common_params(steps=1000, lr=1e-3, io_lr=1e-4, batch_size=4),
    Param("preset", str, "default", "parameter set applied before explicit values", choices=("default", "published")),
    Param("stages", list, (1,), "downsampling factor of each stage, coarse to fine (published 4x2x1); one network per stage",
          item=int, minimum=1),
    Param("synth", str, "single+mixed", "synthetic deformation categories drawn for training", choices=SYNTH_CHOICES),
    Param("max_disp_mm", float, 8.0, "largest displacement of the training fields (mm), every stage unless stage_max_disp_mm",
          minimum=0.0, exclusive_minimum=True),
    Param("stage_max_disp_mm", list, None, "largest training displacement per stage (mm; published 20x15x7); none: max_disp_mm",
          item=float, minimum=0.0, exclusive_minimum=True, nullable=True, length_of="stages"),
    Param("grid_spacing_mm", float, 40.0, "B-spline control spacing of the training fields (mm)", minimum=0.0, exclusive_minimum=True),
    _odd("patch_size", 29, "fine patch per axis (voxels); the context sees patch_size voxels at half resolution"),
    Param("width", int, 16, "features per convolution", minimum=1),
    Param("activations", str, "leaky", "leaky: LeakyReLU 0.2; published: ReLU in the convolutions, ELU in the "
          "fully connected part (RegNet's code)", choices=("leaky", "published")),
    Param("loss", str, "mse", "mse: squared end-point error (mm^2); huber: Huber of the error in mm, delta 1 mm (2019)",
          choices=("mse", "huber")),
    Param("bending_weight", float, 0.0, "weight of the bending energy of the predicted field (mm, per voxel; 2019: 0.1)",
          minimum=0.0),
    Param("balance", str, "none", "training crops: none (uniform) or classes (centred on RegNet's displacement classes "
          "in turn)", choices=("none", "classes")),
    Param("output_patch", int, 24, "output voxels per axis of a training crop", minimum=2, parity="even"),
    Param("patches_per_pair", int, 2, "training crops cut from each synthetic pair", minimum=1),
    Param("field_window", int, 0, "voxels per axis (of each stage's grid) of the box each training field lives on "
          "(0: the whole image)", minimum=0),
    Param("noise_std", float, 0.01, "Gaussian noise added to training pairs (fraction of the image range)", minimum=0.0),
    Param("tile", int, 128, "output voxels per axis predicted at once at registration (even)", minimum=2),
    _odd("ncc_window", 9, "local NCC window of instance optimisation (voxels)"),
    Param("io_smooth", float, 1.0, "weight of the diffusion regulariser in instance optimisation", minimum=0.0),
)

PRESETS: dict[str, dict[str, Any]] = {
    # CPU budgets: one stage, squared end-point error, uniform crops (measurements in the module docstring).
    "default": {},
    # The 2019 RegNet's settings (GPU budgets; the authors publish no step count).
    "published": {
        "stages": (4, 2, 1), "stage_max_disp_mm": (20.0, 15.0, 7.0), "loss": "huber", "bending_weight": 0.1,
        "balance": "classes", "activations": "published", "patch_size": 29, "output_patch": 20, "lr": 1e-3,
        "batch_size": 15, "patches_per_pair": 1,
    },
}


def stage_settings(params: Mapping[str, Any]) -> list[tuple[int, float]]:
    """(downsampling factor, largest training displacement in mm) of each stage, coarse to fine."""
    maxima = params["stage_max_disp_mm"] or [params["max_disp_mm"]] * len(params["stages"])
    return list(zip(params["stages"], maxima))


class RegNet(LearnedMethod):
    """RegNet: supervised multi-scale patch CNNs on synthetic deformations; see the module docstring."""

    name = "regnet"
    params = PARAMS
    presets = PRESETS

    def resolve_params(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        values = super().resolve_params(raw)
        stages = values["stages"]
        if any(coarse <= fine for coarse, fine in zip(stages, stages[1:])):
            raise InputError(
                f"method 'regnet': parameter 'stages'={value_text(stages)} must decrease from coarse to fine (e.g. 4x2x1)"
            )
        if 0 < values["field_window"] < values["output_patch"]:
            raise InputError(
                f"method 'regnet': parameter 'field_window'={values['field_window']} is smaller than "
                f"'output_patch'={values['output_patch']}; use 0 (whole image) or at least output_patch"
            )
        return values

    def check_shape(
        self, shape: Sequence[int], params: Mapping[str, Any], spacing: Sequence[float] | None = None
    ) -> None:
        """InputError naming the parameter when ``synth`` needs 3D images or a stage's grid has an
        axis shorter than ``output_patch`` (a training crop would not fit)."""
        super().check_shape(shape, params, spacing)
        if "respiratory" in params["synth"] and len(shape) != 3:
            raise InputError(f"method 'regnet': parameter 'synth'={params['synth']} needs 3D images, got {len(shape)}D")
        for factor in params["stages"]:
            coarse = shrunk_shape(shape, factor)
            if min(coarse) >= params["output_patch"]:
                continue
            if factor == 1:
                raise InputError(
                    f"method 'regnet': parameter 'output_patch'={params['output_patch']} exceeds the image shape {tuple(shape)}"
                )
            raise InputError(
                f"method 'regnet': parameter 'stages'={value_text(params['stages'])}: factor {factor} shrinks the image "
                f"of shape {tuple(shape)} to {coarse}, smaller than 'output_patch'={params['output_patch']} on an axis"
            )

    def build_model(self, shape: tuple[int, ...], params: Mapping[str, Any]) -> nn.Module:
        self.check_shape(shape, params)
        return RegNetCascade(len(shape), params["stages"], params["patch_size"], params["width"], params["activations"])

    def sample_batch(self, data: TrainingSet, rng: np.random.Generator, params: Mapping[str, Any], device: torch.device) -> Batch:
        """Each stage's crops (:func:`~registration_core.methods.regnet_sampling.sample_stage_crops`),
        keys suffixed by the stage's index: ``fixed0``/``moving0`` (N, 1, *(output_patch + 2 halo)),
        ``disp0`` (N, ndim, *output_patch) in stage voxels, ``spacing_mm0`` (ndim,), ..."""
        margin = halo(params["patch_size"])
        batch: Batch = {}
        for index, (factor, max_disp_mm) in enumerate(stage_settings(params)):
            crops = sample_stage_crops(data, rng, params, factor, max_disp_mm, margin)
            batch.update({f"{key}{index}": value.to(device) for key, value in crops.items()})
        return batch

    def loss(self, model: nn.Module, batch: Batch, params: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sum over stages of :func:`displacement_loss` on the crops' central voxels; with several
        stages each term is logged per stage (``epe_mm_s4``)."""
        total = torch.zeros((), device=batch["fixed0"].device)
        terms: dict[str, torch.Tensor] = {}
        for index, (factor, network) in enumerate(zip(model.factors, model.stages)):
            prediction = network(torch.cat([batch[f"fixed{index}"], batch[f"moving{index}"]], dim=1))
            stage_total, stage_terms = displacement_loss(
                prediction, batch[f"disp{index}"], batch[f"spacing_mm{index}"], params["loss"], params["bending_weight"]
            )
            total = total + stage_total
            suffix = f"_s{factor}" if len(model.factors) > 1 else ""
            terms.update({f"{name}{suffix}": value for name, value in stage_terms.items()})
        return total, terms

    def predict(self, model: nn.Module, fixed: torch.Tensor, moving: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
        return predict_cascade(model, fixed, moving, params["tile"])

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
