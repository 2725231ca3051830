"""VoxelMorph (Balakrishnan et al., IEEE TMI 2019; Dalca et al., MICCAI 2018), 2D and 3D.

A UNet reads the pair ``cat([moving, fixed])`` (B, 2, *spatial) and a 3x3(x3) convolution turns its
last features into a field ``(B, ndim, *spatial)`` in voxels of the fixed grid:

* ``output=displacement``: the field is the displacement ``u`` (fixed point ``x`` -> moving point
  ``x + u(x)``);
* ``output=diffeomorphic``: the field is a stationary velocity ``v``, resized to the coarse grid
  (``shape // int_downsize`` per axis), integrated by scaling and squaring
  (``u_0 = v / 2**int_steps``, then ``int_steps`` times ``u <- u + u o (id + u)``) and resized back.
  The inverse map is ``exp(-v)`` and is returned too (``inverse_displacement.nii.gz``).

Training loss (unsupervised, plus optional label supervision)::

    L = L_sim(fixed, moving o (id + u)) + smooth_weight * m * L_grad(field) + dice_weight * L_dice

``L_sim`` is ``1 - mean(local NCC^2)`` (window ``ncc_window``, :class:`registration_core.core.losses.LocalNCC`,
VoxelMorph's NCC plus a constant) or the MSE; ``L_grad`` is the mean over axes of the mean squared
forward difference of the field the network predicts (the coarse velocity for ``diffeomorphic``),
with ``m = int_downsize`` for a resized velocity, as in the published training script, else 1;
``L_dice = 1 - soft Dice`` of the one-hot label maps, the moving one warped linearly (only with
training label maps; instance optimisation never uses labels). ``smooth_weight`` defaults to the
published value for the similarity: 1.0 for NCC, 0.01 for MSE.

Architecture (the published defaults: enc 16,32,32,32; dec 32,32,32,32,32,16,16): encoder level ``l``
is one convolution block (3x3(x3) convolution + LeakyReLU 0.2) with ``enc[l]`` features at
resolution ``1/2**l`` then a 2x max-pooling; decoder level ``l`` is one block with ``dec[l]`` features,
nearest upsampling to the skip's size and concatenation with encoder level ``len(enc) - 1 - l``; the
remaining ``dec`` entries are full-resolution blocks. The flow convolution starts with N(0, 1e-5)
weights and zero bias, so the untrained network predicts almost the identity.

Differences from the public code: resizing uses the exact voxel ratio ``(n_out - 1) / (n_in - 1)``
of the ``align_corners=True`` grids (not the nominal factor); upsampling goes to the skip's size, so
any shape with every axis >= ``2**len(enc)`` works; integration samples with border padding; the
published script also multiplies ``L_grad`` by ``int_downsize`` when nothing is resized (an implicit
doubling of the weight), which is not repeated here.

Presets: ``default`` (the published model and loss; 1,000 steps at Adam 1e-3 for a CPU budget:
on 14 real brain slices and unseen pairs with known fields, identity Dice 0.438, 1e-3 reaches 0.671
where the published 1e-4 reaches 0.584 in those steps, ``benchmarks/learned_synth_2d.py``) and
``published`` (also the published training: Adam 1e-4, batch 1, 150,000 steps = 1,500 epochs x 100
steps, inter-image pairs only).

Conventions: images (B, 1, *spatial) float32, label maps (B, 1, *spatial) int64, fields
(B, ndim, *spatial) in voxels, channel ``d`` along array axis ``d`` (:mod:`registration_core.core.spatial`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from registration_core.core.losses import LocalNCC, diffusion_loss, mse_loss
from registration_core.core.params import Param
from registration_core.core.spatial import compose, disp_norm_to_vox, disp_vox_to_norm, warp
from registration_core.errors import InputError
from registration_core.methods.augment import augment_params, augmented_pair_batch
from registration_core.methods.training import Batch, LearnedMethod, TrainingSet, common_params, param_schema

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_MAX_POOL = {2: F.max_pool2d, 3: F.max_pool3d}
_LINEAR_MODE = {2: "bilinear", 3: "trilinear"}

DEFAULT_SMOOTH_WEIGHT = {"ncc": 1.0, "mse": 0.01}
"""Published smoothness weights (lambda) per similarity, used when ``smooth_weight`` is none."""

FLOW_INIT_STD = 1e-5
"""Standard deviation of the flow convolution's initial weights (published)."""


# -- fields ------------------------------------------------------------------------------------


def resize_field(field_vox: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Linearly resample a voxel field (B, ndim, *old) onto ``shape`` (B, ndim, *shape), still in voxels.

    Both grids span the same extent (``align_corners=True``), so component ``d`` is rescaled by
    ``(shape[d] - 1) / (old[d] - 1)``: a map keeps its physical meaning on the new grid.
    """
    ndim = field_vox.shape[1]
    if tuple(field_vox.shape[2:]) == tuple(shape):
        return field_vox
    norm = disp_vox_to_norm(field_vox, field_vox.shape[2:])
    resized = F.interpolate(norm, size=tuple(shape), mode=_LINEAR_MODE[ndim], align_corners=True)
    return disp_norm_to_vox(resized, shape)


def scaling_and_squaring(velocity_vox: torch.Tensor, steps: int) -> torch.Tensor:
    """Displacement (B, ndim, *spatial) of ``exp(v)`` for a stationary velocity (B, ndim, *spatial), voxels.

    ``u_0 = v / 2**steps``, then ``steps`` times ``u <- u + u o (id + u)`` (linear interpolation,
    border padding); ``steps = 0`` returns ``v`` (one Euler step).
    """
    disp = velocity_vox / 2.0**steps
    for _ in range(steps):
        disp = compose(disp, disp)
    return disp


def gradient_l2_loss(field_vox: torch.Tensor) -> torch.Tensor:
    """VoxelMorph's ``Grad('l2')``: mean over axes of the mean squared forward difference of (B, ndim, *spatial)."""
    return diffusion_loss(field_vox) / (field_vox.dim() - 2)


def one_hot(labels: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Label map (B, 1, *spatial) int -> float indicators (B, K, *spatial) of the K ``values``."""
    return (labels == values.view(1, -1, *([1] * (labels.dim() - 2)))).to(torch.float32)


def soft_dice_loss(fixed_labels: torch.Tensor, moving_labels: torch.Tensor, disp_vox: torch.Tensor) -> torch.Tensor:
    """``1 - mean soft Dice`` of the fixed label map and the moving one warped by ``disp_vox``.

    Label maps (B, 1, *spatial) int64; the moving one-hot maps are warped linearly (differentiable).
    Dice ``2 sum(f w) / sum(f + w)`` per pair and foreground label (values != 0 of either map), averaged
    over the (pair, label) entries present in the pair; 0 when no pair has a foreground label.
    """
    values = torch.unique(torch.cat([fixed_labels, moving_labels]))
    values = values[values != 0]
    if values.numel() == 0:
        return disp_vox.new_zeros(())
    fixed_oh = one_hot(fixed_labels, values)
    warped_oh = warp(one_hot(moving_labels, values), disp_vox, mode="linear")
    axes = tuple(range(2, disp_vox.dim()))
    overlap = 2.0 * (fixed_oh * warped_oh).sum(dim=axes)
    size = (fixed_oh + warped_oh).sum(dim=axes)
    present = size > 0
    return 1.0 - (overlap[present] / size[present]).mean()


# -- network ----------------------------------------------------------------------------------


def conv_block(ndim: int, in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3(x3) convolution (stride 1, zero padding 1) + LeakyReLU(0.2)."""
    return nn.Sequential(_CONV[ndim](in_channels, out_channels, 3, padding=1), nn.LeakyReLU(0.2))


class UNet(nn.Module):
    """VoxelMorph's UNet: (B, in_channels, *spatial) -> (B, out_channels, *spatial); see the module docstring."""

    def __init__(self, ndim: int, in_channels: int, enc: Sequence[int], dec: Sequence[int]) -> None:
        super().__init__()
        self.ndim = ndim
        levels = len(enc)
        channels = in_channels
        self.encoder = nn.ModuleList()
        for features in enc:
            self.encoder.append(conv_block(ndim, channels, features))
            channels = features
        self.decoder = nn.ModuleList()
        for level, features in enumerate(dec[:levels]):
            self.decoder.append(conv_block(ndim, channels, features))
            channels = features + enc[levels - 1 - level]
        self.remaining = nn.ModuleList()
        for features in dec[levels:]:
            self.remaining.append(conv_block(ndim, channels, features))
            channels = features
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = _MAX_POOL[self.ndim](x, 2)
        for block in self.decoder:
            skip = skips.pop()
            x = torch.cat([F.interpolate(block(x), size=skip.shape[2:], mode="nearest"), skip], dim=1)
        for block in self.remaining:
            x = block(x)
        return x


class VoxelMorphNet(nn.Module):
    """UNet + flow convolution (+ scaling and squaring) for images of one ``shape``.

    ``forward(fixed, moving)`` with images (B, 1, *shape) returns ``(disp_vox, field_vox)``: the
    displacement (B, ndim, *shape) and the field the network predicts (the displacement itself, or the
    velocity on ``coarse_shape`` for ``diffeomorphic``), both in voxels of their grids.
    """

    def __init__(
        self, shape: Sequence[int], enc: Sequence[int], dec: Sequence[int],
        diffeomorphic: bool, int_steps: int, int_downsize: int,
    ) -> None:
        super().__init__()
        self.shape = tuple(int(n) for n in shape)
        ndim = len(self.shape)
        self.diffeomorphic = diffeomorphic
        self.int_steps = int_steps
        self.coarse_shape = tuple(n // int_downsize for n in self.shape) if diffeomorphic else self.shape
        self.unet = UNet(ndim, 2, enc, dec)
        self.flow = _CONV[ndim](self.unet.out_channels, ndim, 3, padding=1)
        nn.init.normal_(self.flow.weight, mean=0.0, std=FLOW_INIT_STD)
        nn.init.zeros_(self.flow.bias)

    def field(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """The predicted field (B, ndim, *coarse_shape) in voxels of ``coarse_shape``."""
        flow = self.flow(self.unet(torch.cat([moving, fixed], dim=1)))
        return resize_field(flow, self.coarse_shape)

    def displacement(self, field_vox: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
        """Displacement (B, ndim, *shape) of the field (``sign=-1``: of the inverse, diffeomorphic only)."""
        if not self.diffeomorphic:
            return field_vox
        return resize_field(scaling_and_squaring(sign * field_vox, self.int_steps), self.shape)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        field_vox = self.field(fixed, moving)
        return self.displacement(field_vox), field_vox


# -- parameters -------------------------------------------------------------------------------


def parse_features(text: str, key: str) -> tuple[int, ...]:
    """Comma-separated positive integers (``"16,32,32,32"``); InputError names the parameter ``key``."""
    try:
        values = tuple(int(item) for item in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise InputError(
            f"method 'voxelmorph': parameter '{key}' must be comma-separated positive integers "
            f"(e.g. 16,32,32,32), got {text!r}"
        )
    return values


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "published": {
        "steps": 150_000, "lr": 1e-4, "batch_size": 1, "enc_features": "16,32,32,32",
        "dec_features": "32,32,32,32,32,16,16", "output": "diffeomorphic", "int_steps": 7, "int_downsize": 2,
        "similarity": "ncc", "ncc_window": 9, "smooth_weight": 1.0, "synth_fraction": 0.0,
    },
}

PARAMS = param_schema(
    *common_params(steps=1000, lr=1e-3, io_lr=1e-4, batch_size=1),
    Param("preset", str, "default", "parameter set applied before explicit values", choices=tuple(PRESETS)),
    Param("enc_features", str, "16,32,32,32", "encoder features per level (comma-separated; one max-pooling each)"),
    Param("dec_features", str, "32,32,32,32,32,16,16",
          "decoder features: one per encoder level, then full-resolution convolutions (comma-separated)"),
    Param("output", str, "diffeomorphic", "displacement, or a velocity integrated by scaling and squaring",
          choices=("diffeomorphic", "displacement")),
    Param("int_steps", int, 7, "scaling-and-squaring steps (diffeomorphic)", minimum=0),
    Param("int_downsize", int, 2, "velocity grid coarsening factor (diffeomorphic)", minimum=1),
    Param("similarity", str, "ncc", "image similarity", choices=("ncc", "mse")),
    Param("ncc_window", int, 9, "local NCC window in voxels", minimum=1, parity="odd"),
    Param("smooth_weight", float, None, "weight of the gradient smoothness loss (none: 1.0 for ncc, 0.01 for mse)",
          minimum=0.0, nullable=True),
    Param("dice_weight", float, 0.0, "weight of the soft Dice loss on training label maps (needs --labels)", minimum=0.0),
    *augment_params(fraction=0.0, max_disp_mm=10.0),
)


class VoxelMorph(LearnedMethod):
    """VoxelMorph; see the module docstring."""

    name = "voxelmorph"
    params = PARAMS
    presets = PRESETS

    def resolve_params(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Parse and check the feature lists and the NCC window; fill in the similarity's smoothness weight."""
        values = super().resolve_params(raw)
        enc = parse_features(values["enc_features"], "enc_features")
        dec = parse_features(values["dec_features"], "dec_features")
        if len(dec) < len(enc):
            raise InputError(
                f"method 'voxelmorph': parameter 'dec_features' needs at least {len(enc)} entries "
                f"(one per encoder level), got {values['dec_features']!r}"
            )
        if values["smooth_weight"] is None:
            values["smooth_weight"] = DEFAULT_SMOOTH_WEIGHT[values["similarity"]]
        return values

    def build_model(self, shape: tuple[int, ...], params: Mapping[str, Any]) -> VoxelMorphNet:
        """The network for images of ``shape``; InputError when an axis is too short for the levels."""
        enc = parse_features(params["enc_features"], "enc_features")
        dec = parse_features(params["dec_features"], "dec_features")
        diffeomorphic = params["output"] == "diffeomorphic"
        if len(shape) not in _CONV:
            raise InputError(f"method 'voxelmorph': images must be 2D or 3D, got shape {shape}")
        if min(shape) < 2 ** len(enc):
            raise InputError(
                f"method 'voxelmorph': image shape {shape} is too small for {len(enc)} encoder levels "
                f"(every axis needs >= {2 ** len(enc)} voxels); use fewer enc_features"
            )
        if diffeomorphic and min(shape) // params["int_downsize"] < 2:
            raise InputError(
                f"method 'voxelmorph': parameter 'int_downsize' {params['int_downsize']} leaves fewer than "
                f"2 voxels on an axis of shape {shape}"
            )
        return VoxelMorphNet(shape, enc, dec, diffeomorphic, params["int_steps"], params["int_downsize"])

    def _image_terms(
        self, model: VoxelMorphNet, batch: Batch, params: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Similarity + weighted smoothness: (total, terms, displacement (B, ndim, *spatial))."""
        disp, field = model(batch["fixed"], batch["moving"])
        warped = warp(batch["moving"], disp)
        if params["similarity"] == "ncc":
            sim = LocalNCC(batch["fixed"], params["ncc_window"])(warped)
        else:
            sim = mse_loss(batch["fixed"], warped)
        resized = field.shape[2:] != disp.shape[2:]
        grad = gradient_l2_loss(field) * (params["int_downsize"] if resized else 1)
        return sim + params["smooth_weight"] * grad, {"sim": sim, "grad": grad}, disp

    def check_training_set(self, data: TrainingSet, params: Mapping[str, Any], option: str) -> None:
        """Label supervision (``dice_weight`` > 0) needs label maps for every training/validation image."""
        if params["dice_weight"] > 0 and data.labels is None:
            labels_option = option.replace("images", "labels")
            raise InputError(f"method 'voxelmorph': parameter 'dice_weight' > 0 needs label maps ({labels_option})")

    def sample_batch(self, data: TrainingSet, rng: np.random.Generator, params: Mapping[str, Any], device: torch.device) -> Batch:
        """Inter-image pairs, ``synth_fraction`` of them synthetic self-pairs (:mod:`registration_core.methods.augment`);
        with ``dice_weight`` > 0 only inter-image pairs (a synthetic copy has no label map)."""
        if params["dice_weight"] > 0:
            return super().sample_batch(data, rng, params, device)
        return augmented_pair_batch(data, rng, params, device)

    def loss(self, model: nn.Module, batch: Batch, params: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss; the Dice term needs ``fixed_labels``/``moving_labels`` when ``dice_weight`` > 0."""
        total, terms, disp = self._image_terms(model, batch, params)
        if params["dice_weight"] > 0:
            if "fixed_labels" not in batch:
                raise InputError("method 'voxelmorph': parameter 'dice_weight' > 0 needs training label maps (--labels)")
            terms["dice"] = soft_dice_loss(batch["fixed_labels"], batch["moving_labels"], disp)
            total = total + params["dice_weight"] * terms["dice"]
        return total, terms

    def instance_loss(
        self, model: nn.Module, batch: Batch, params: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Similarity + smoothness only: instance optimisation never uses labels."""
        total, terms, _ = self._image_terms(model, batch, params)
        return total, terms

    def predict(self, model: nn.Module, fixed: torch.Tensor, moving: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
        return model(fixed, moving)[0]

    def predict_inverse(
        self, model: nn.Module, fixed: torch.Tensor, moving: torch.Tensor, params: Mapping[str, Any]
    ) -> torch.Tensor | None:
        """``exp(-v)`` for ``diffeomorphic`` (moving point -> fixed point), None for ``displacement``."""
        if not model.diffeomorphic:
            return None
        return model.displacement(model.field(fixed, moving), sign=-1.0)


METHOD = VoxelMorph()
