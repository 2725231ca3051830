"""Linear and deformable registration CNN (Christodoulidis et al., RAMBO 2018), 2D and 3D.

One network looks at the moving and fixed images (concatenated along channels) and predicts

* **spatial gradients** ``phi`` (B, ndim, *spatial) in ``(0, max_gradient)`` (``2 * sigmoid`` for
  the published ``max_gradient = 2``): ``phi_d(x)`` is the spacing, in moving-image voxels, between
  the sampling points of fixed voxels ``x - e_d`` and ``x`` along axis ``d``;
* an **affine matrix** ``A = [M | t]`` (B, ndim, ndim + 1), the identity plus the branch's output.

Geometry (array axis order ``(i, j[, k])`` throughout):

1. Deformable grid, moving voxels: ``G_d(x) = sum_{s=0}^{x_d} phi_d(x with x_d = s) - 1`` (a
   cumulative sum along axis ``d`` of channel ``d``). ``phi == 1`` gives ``G(x) = x``, the identity.
   ``G_d(x + e_d) - G_d(x) = phi_d(x + e_d) > 0``: the grid is strictly increasing along every grid
   line, so neighbouring samples never swap order along an axis (the paper's "no self-crossing").
   The full Jacobian determinant is *not* bounded below: its off-diagonal terms ``dG_d / dx_e``
   (``e != d``) are free, so ``det`` can still drop below 0 when the field shears strongly; the
   evaluation's folding metrics measure it.
2. Affine, applied after the deformable grid to its coordinates (as the authors' smoothTransformer
   layer does: ``grid <- A [G; 1]``): ``y = M g + t`` with ``g`` the grid in normalised
   coordinates ([-1, 1], align_corners, so the image centre is the origin).
3. Our convention: the fixed voxel ``x`` samples the moving image at ``y(x)``, so the displacement
   is ``u(x) = y(x) - x`` in fixed-grid voxels (:func:`sampling_grid_to_disp_vox`); the warped
   image is ``moving o (id + u)`` through :func:`registration_core.core.spatial.warp`, the same sampler
   the evaluation uses.

Loss (per pair, averaged over the batch): ``MSE(warped, fixed) + alpha * sum|A - I| +
beta * sum|phi - 1|``. The L1 terms are *sums* over the matrix entries and over every voxel and
channel of ``phi`` (the reference's Keras activity regulariser ``alpha * K.sum(K.abs(x - value))``),
so ``beta``'s weight grows with the number of voxels. Published: ``alpha = beta = 1e-6``, Adam
lr 1e-3, batch size 2.

Network (published widths with ``features = 32``): encoder of five 3x3(x3) convolutions with
dilations 1, 1, 2, 3, 5 and ``(1, 2, 4, 1, 1) * features`` channels, each followed by instance
normalisation and LeakyReLU; the input and every layer's output are concatenated (multi-scale
feature merging). Deformable branch: squeeze-excitation (reduction 16) -> five 3x3(x3)
convolutions with ``(4, 2, 1, 1, 1) * features`` channels (instance norm, LeakyReLU) -> a last
convolution to ``ndim`` channels -> ``max_gradient`` logistic. Affine branch: global average
pooling -> linear map to ``ndim * (ndim + 1)`` values (times :data:`AFFINE_OUTPUT_SCALE`). Both last
layers start at zero, so an untrained network returns the identity (as in the authors' example).

Training pairs (our default, not the paper's): every pair is a training image and its own copy
deformed by a fresh random smooth field (``synth_fraction = 1``, :mod:`registration_core.methods.augment`);
``preset=published`` or ``synth_fraction=0`` trains on pairs of distinct images as published. Why:
trained on the ~200 ordered pairs of 14 real brain slices, the network learns to explain
inter-subject differences, which no smooth map removes, and applied to unseen slices with known
smooth deformations it made them worse than no registration (Dice 0.438 -> 0.385 after 300 steps,
0.359 after 400; ``benchmarks/learned_synth_2d.py``); with synthetic self-pairs it improves them
(0.502 with half the pairs synthetic after 300 steps, 0.548 with all of them after 600, no folding).

Differences from the public reference code (stergioc/smooth-transformer and the slides' listing):
the reference samples at the inclusive cumulative sum, ``sum_{s<=x} phi``, which is ``x + 1`` when
``phi == 1`` (a one-voxel shift of the identity); we subtract 1. The reference applies ``A`` to voxel
coordinates whose origin is the corner voxel, so a rotation turns the image about its corner and
couples with translation; we apply it in normalised coordinates centred on the image. The slides'
listing reuses ``conv1`` for every encoder layer and mis-sizes ``conv5``; we build the five layers
as described.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from registration_core.core.losses import mse_loss
from registration_core.core.params import Param
from registration_core.core.spatial import disp_norm_to_vox, disp_vox_to_norm, identity_grid_norm, warp
from registration_core.errors import InputError
from registration_core.methods.augment import augment_params, augmented_pair_batch
from registration_core.methods.training import Batch, LearnedMethod, TrainingSet, common_params, param_schema

DILATIONS = (1, 1, 2, 3, 5)
"""Encoder dilations (Fibonacci-like growth, denser sampling than powers of two)."""
ENCODER_WIDTHS = (1, 2, 4, 1, 1)
"""Encoder channels as multiples of ``features`` (published 32, 64, 128, 32, 32)."""
DECODER_WIDTHS = (4, 2, 1, 1, 1)
"""Deformable-branch channels as multiples of ``features`` (published 128, 64, 32, 32, 32)."""
LEAKY_SLOPE = 0.01
AFFINE_OUTPUT_SCALE = 0.1
"""Factor on the affine branch's output. Its linear layer sums every pooled feature, so one Adam step
moves ``A`` by about ``lr`` times the number of features; without the factor the matrix overshoots
(lr 1e-2 diverged, lr 3e-3 settled on a spurious scaling in our synthetic tests)."""

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_INSTANCE_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}

PARAMS = param_schema(
    *common_params(steps=1000, lr=1e-3, io_lr=1e-4, batch_size=2),
    Param("preset", str, "default", "parameter set applied before explicit values", choices=("default", "published")),
    Param("features", int, 8, "base width of the convolutions (published: 32)", minimum=1),
    Param("alpha", float, 1e-6, "weight of sum|A - I| (affine matrix)", minimum=0.0),
    Param("beta", float, 1e-6, "weight of sum|phi - 1| over voxels and axes (spatial gradients)", minimum=0.0),
    Param(
        "max_gradient", float, 2.0, "upper bound of the spatial gradients (voxels per voxel)",
        minimum=1.0, exclusive_minimum=True,
    ),
    Param("affine", bool, True, "use the affine branch (false: deformable grid only)"),
    Param("se_reduction", int, 16, "channel reduction of the squeeze-excitation block", minimum=1),
    *augment_params(fraction=1.0, max_disp_mm=10.0),
)

PRESETS: dict[str, dict[str, Any]] = {
    # Narrow network for CPU runs (38k parameters in 2D instead of 0.6M).
    "default": {"features": 8},
    # The paper's widths and training settings (GPU).
    "published": {
        "features": 32, "lr": 1e-3, "batch_size": 2, "alpha": 1e-6, "beta": 1e-6, "max_gradient": 2.0,
        "synth_fraction": 0.0,
    },
}


# -- geometry (pure functions) ---------------------------------------------------------------------


def logistic_gradients(logits: torch.Tensor, max_gradient: float) -> torch.Tensor:
    """``c / (1 + (c - 1) exp(-z))``: logits (B, ndim, *spatial) -> gradients in ``(0, c)``, 1 at ``z = 0``.

    For ``c = 2`` this is ``2 * sigmoid(z)``, the paper's activation.
    """
    return max_gradient / (1.0 + (max_gradient - 1.0) * torch.exp(-logits))


def integrate_gradients(gradients: torch.Tensor) -> torch.Tensor:
    """Spatial gradients (B, ndim, *spatial) -> deformable sampling grid (B, ndim, *spatial) in moving voxels.

    Channel ``d`` is summed cumulatively along array axis ``d``, minus 1, so gradients of 1 give
    the identity grid (voxel indices).
    """
    ndim = gradients.shape[1]
    return torch.stack([gradients[:, d].cumsum(dim=d + 1) for d in range(ndim)], dim=1) - 1.0


def apply_affine(points_norm: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``M p + t`` for points (B, ndim, *spatial) and matrices ``[M | t]`` (B, ndim, ndim + 1), array order."""
    ndim = points_norm.shape[1]
    linear, translation = matrix[:, :, :ndim], matrix[:, :, ndim]
    moved = torch.einsum("brc,bc...->br...", linear, points_norm)
    return moved + translation.view(*translation.shape, *([1] * ndim))


def sampling_grid_to_disp_vox(gradients: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Displacement (B, ndim, *spatial) in fixed-grid voxels of the composed warp.

    ``gradients`` (B, ndim, *spatial) are integrated into the deformable grid ``G`` (moving voxels),
    converted to normalised coordinates ``g = G * 2 / (n - 1) - 1``, mapped by the affine
    ``matrix`` (B, ndim, ndim + 1) to ``y``; the displacement is ``y - x`` converted back to voxels
    (the normalised identity ``x`` and the voxel identity differ by the same affine rescaling).
    """
    shape = tuple(gradients.shape[2:])
    identity = identity_grid_norm(shape, device=gradients.device, dtype=gradients.dtype)
    grid_norm = disp_vox_to_norm(integrate_gradients(gradients), shape) - 1.0
    return disp_norm_to_vox(apply_affine(grid_norm, matrix) - identity, shape)


def identity_affine(ndim: int, batch: int = 1, like: torch.Tensor | None = None) -> torch.Tensor:
    """The identity ``[I | 0]`` of shape (batch, ndim, ndim + 1)."""
    if like is None:
        return torch.eye(ndim, ndim + 1).expand(batch, ndim, ndim + 1)
    return torch.eye(ndim, ndim + 1, dtype=like.dtype, device=like.device).expand(batch, ndim, ndim + 1)


# -- network ---------------------------------------------------------------------------------------


def _conv_block(ndim: int, c_in: int, c_out: int, dilation: int = 1) -> nn.Sequential:
    """3x3(x3) convolution (same size) -> instance norm (no affine) -> LeakyReLU."""
    return nn.Sequential(
        _CONV[ndim](c_in, c_out, 3, padding=dilation, dilation=dilation),
        _INSTANCE_NORM[ndim](c_out),
        nn.LeakyReLU(LEAKY_SLOPE),
    )


class Encoder(nn.Module):
    """(moving, fixed) (B, 1, *spatial) each -> merged features (B, ``channels``, *spatial).

    Five dilated convolution blocks in sequence; the output concatenates the 2-channel input and
    every block's output.
    """

    def __init__(self, ndim: int, features: int) -> None:
        super().__init__()
        widths = [w * features for w in ENCODER_WIDTHS]
        inputs = [2, *widths[:-1]]
        self.blocks = nn.ModuleList(
            _conv_block(ndim, c_in, c_out, dilation) for c_in, c_out, dilation in zip(inputs, widths, DILATIONS)
        )
        self.channels = 2 + sum(widths)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        x = torch.cat([moving, fixed], dim=1)
        outputs = [x]
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return torch.cat(outputs, dim=1)


class SqueezeExcitation(nn.Module):
    """Channel re-weighting: ``x * sigmoid(W2 relu(W1 mean_spatial(x)))`` for x (B, C, *spatial)."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.squeeze = nn.Linear(channels, hidden)
        self.excite = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.flatten(2).mean(dim=2)
        weights = torch.sigmoid(self.excite(F.relu(self.squeeze(pooled))))
        return x * weights.view(*weights.shape, *([1] * (x.dim() - 2)))


class LinearDeformableNet(nn.Module):
    """(moving, fixed) (B, 1, *spatial) -> (spatial gradients (B, ndim, *spatial), affine (B, ndim, ndim + 1))."""

    def __init__(self, ndim: int, features: int, se_reduction: int, max_gradient: float, use_affine: bool) -> None:
        super().__init__()
        self.ndim = ndim
        self.max_gradient = max_gradient
        self.encoder = Encoder(ndim, features)
        widths = [w * features for w in DECODER_WIDTHS]
        inputs = [self.encoder.channels, *widths[:-1]]
        self.deformable = nn.Sequential(
            SqueezeExcitation(self.encoder.channels, se_reduction),
            *(_conv_block(ndim, c_in, c_out) for c_in, c_out in zip(inputs, widths)),
        )
        self.gradient_head = _CONV[ndim](widths[-1], ndim, 3, padding=1)
        self.affine_head = nn.Linear(self.encoder.channels, ndim * (ndim + 1)) if use_affine else None
        heads = [self.gradient_head] + ([self.affine_head] if self.affine_head is not None else [])
        for head in heads:  # identity at initialisation: gradients 1, affine I
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(moving, fixed)
        gradients = logistic_gradients(self.gradient_head(self.deformable(features)), self.max_gradient)
        identity = identity_affine(self.ndim, features.shape[0], like=features)
        if self.affine_head is None:
            return gradients, identity
        offset = self.affine_head(features.flatten(2).mean(dim=2)) * AFFINE_OUTPUT_SCALE
        return gradients, identity + offset.view(-1, self.ndim, self.ndim + 1)


# -- method ----------------------------------------------------------------------------------------


class LinearDeformable(LearnedMethod):
    """Christodoulidis et al. 2018, unsupervised (MSE); see the module docstring."""

    name = "linear_deformable"
    params = PARAMS
    presets = PRESETS
    requires_checkpoint = False  # io_steps alone fits a fresh network to the pair

    def build_model(self, shape: tuple[int, ...], params: Mapping[str, Any]) -> nn.Module:
        if len(shape) not in _CONV or min(shape) < 2:
            raise InputError(
                f"method '{self.name}': images must be 2D or 3D with every axis >= 2 voxels, got shape {tuple(shape)}"
            )
        return LinearDeformableNet(
            len(shape), params["features"], params["se_reduction"], params["max_gradient"], params["affine"]
        )

    def sample_batch(
        self, data: TrainingSet, rng: np.random.Generator, params: Mapping[str, Any], device: torch.device
    ) -> Batch:
        """Inter-image pairs, ``synth_fraction`` of them replaced by synthetic self-pairs (:mod:`registration_core.methods.augment`)."""
        return augmented_pair_batch(data, rng, params, device)

    def loss(
        self, model: nn.Module, batch: Batch, params: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        fixed, moving = batch["fixed"], batch["moving"]
        gradients, matrix = model(moving, fixed)
        warped = warp(moving, sampling_grid_to_disp_vox(gradients, matrix))
        terms = {
            "mse": mse_loss(fixed, warped),
            "affine_l1": (matrix - identity_affine(matrix.shape[1], like=matrix)).abs().flatten(1).sum(1).mean(),
            "gradient_l1": (gradients - 1.0).abs().flatten(1).sum(1).mean(),
        }
        total = terms["mse"] + params["alpha"] * terms["affine_l1"] + params["beta"] * terms["gradient_l1"]
        return total, terms

    def predict(
        self, model: nn.Module, fixed: torch.Tensor, moving: torch.Tensor, params: Mapping[str, Any]
    ) -> torch.Tensor:
        gradients, matrix = model(moving, fixed)
        return sampling_grid_to_disp_vox(gradients, matrix)


METHOD = LinearDeformable()
