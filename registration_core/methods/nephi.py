"""NePhi: generalizable neural deformation fields (Tian et al., ECCV 2024), 2D and 3D.

The forward map ``phi(x) = x + u(x | z)`` (fixed point -> moving point) and the inverse map
``psi(y) = y + v(y | z)`` (moving point -> fixed point) are two coordinate MLPs on normalised
coordinates ``[-1, 1]`` (array axis order, ``align_corners=True``): Fourier features of the point,
sine layers modulated by a ReLU network of the latent code (modulated periodic activations, Mehta
et al. 2021; SIREN initialisation). Both MLPs are conditioned on the same code ``z(x)``: a global
code (one vector per pair) concatenated with a local code interpolated (bi/trilinearly) from a
coarse grid of codes at ``x``. A CNN encoder predicts both codes from the fixed and moving images.

Loss on one pair, all terms on random points uniform in the image domain (no dense field)::

    L = (sim_f + sim_m) / 2 + lambda_gradicon * GradICON + lambda_latent * prior

``sim_f = 1 - NCC(F(x), M(phi(x)))`` over ``sim_points`` points ``x`` of the fixed image and
``sim_m = 1 - NCC(M(y), F(psi(y)))`` over as many points of the moving image (global NCC of the
sampled intensities, linear interpolation); GradICON (:func:`registration_core.core.losses.gradicon_loss`)
of ``phi o psi`` and ``psi o phi`` at ``reg_points`` points, entries averaged
(:func:`registration_core.core.losses.gradicon_symmetric_loss`, the released code's scale,
``lambda_gradicon = 10``); ``prior`` the mean L2 norm of the codes (``lambda_latent = 0.01``, released).

Modes:

* learning (``train``): the encoder and both MLPs are trained over pairs of training images;
* instance optimisation (``register`` with ``io_steps > 0``): the encoder predicts the pair's codes
  once, then the codes and both MLPs are optimised on the pair (the encoder is frozen).
  Without a checkpoint the network is freshly initialised (the displacement starts at zero) and
  the pair is registered by instance optimisation alone, so ``io_steps`` defaults to 300 here
  (the common learned-method default is 0); with a checkpoint, ``io_steps=0`` is pure prediction.

At registration the dense displacement (and the inverse's, written as
``inverse_displacement.nii.gz``) is evaluated on the voxel grid in chunks of ``eval_chunk`` points.
Memory: a training step holds the encoder's feature maps (they grow with the number of voxels, but
the first layer already has only 8 channels at half resolution) and the activations of the sampled
points (independent of the image size); instance optimisation runs the encoder once without
gradients, so beyond the images and the output fields its memory does not depend on the size.

Point counts: fixed (``sim_points``, ``reg_points``) or, as published, proportional to the image
(``sim_ratio`` of the voxels, 0.02 published; ``reg_ratio``, 1e-4 published, bounded to 10-500
points; :func:`point_count`).

Presets: ``default`` (CPU: MLP width 128, 4,096 / 256 points, 2,000 steps at batch 2) and
``published`` (width 512, 2 % / 0.01 % of the voxels, batch 32, 800 instance-optimisation steps,
the paper's longest IO budget of its DirLab table; the paper trains 2,600 epochs on COPDGene,
which ``steps`` cannot state without the dataset's size: set it).

Differences from the paper and its released code (github.com/uncbiag/NePhi): the encoder has no batch normalisation (batches of
1-4 pairs on a CPU make its statistics noise, and instance optimisation runs it on one pair);
no multi-resolution voxel CNN stage; the similarity points are not capped (the paper bounds
their count; the bound is not in the text we hold). Still different from the released code: the
MLP (Fourier features, modulation, depth, local code grid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from registration_core.core.losses import gradicon_symmetric_loss, point_ncc_loss
from registration_core.core.params import Param
from registration_core.core.spatial import disp_norm_to_vox, sample
from registration_core.methods.training import Batch, LearnedMethod, common_params, param_schema

Direction = Literal["forward", "inverse"]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_ENCODER_CHANNELS = (8, 16, 32, 64, 128, 256)
"""Output channels of the encoder's stride-2 convolutions (the paper's); more 256-channel layers are
appended while the feature map is larger than 3 voxels along some axis."""
_GLOBAL_HIDDEN = 256


def sample_at_points(image: torch.Tensor, points_norm: torch.Tensor) -> torch.Tensor:
    """Linearly interpolate ``image`` (B, C, *spatial) at normalised points (B, N, ndim) -> (B, C, N).

    Points are in array axis order; outside the domain the border value is taken.
    """
    b, n, ndim = points_norm.shape
    grid = points_norm.transpose(1, 2).reshape(b, ndim, n, *([1] * (ndim - 1)))
    return sample(image, grid, mode="linear", padding="border").reshape(b, image.shape[1], n)


def uniform_points(batch: int, n: int, ndim: int, like: torch.Tensor) -> torch.Tensor:
    """``n`` points per batch element uniform in ``[-1, 1]^ndim`` (torch's global generator), (batch, n, ndim)."""
    return torch.rand(batch, n, ndim, device=like.device, dtype=like.dtype) * 2.0 - 1.0


def grid_points_norm(shape: Sequence[int], start: int, stop: int, like: torch.Tensor) -> torch.Tensor:
    """Normalised coordinates (1, stop - start, ndim) of the voxels ``start:stop`` of ``shape`` in C order.

    Voxel index ``i`` along an axis of ``n`` voxels sits at ``2 i / (n - 1) - 1`` (``align_corners=True``).
    """
    flat = torch.arange(start, stop, device=like.device)
    index = []
    for n in reversed(shape):
        index.append(flat % n)
        flat = flat // n
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape], device=like.device, dtype=like.dtype)
    return (torch.stack(index[::-1], dim=-1).to(like.dtype) * scale - 1.0)[None]


def _conv_output_size(n: int) -> int:
    """Size after a 3-wide convolution with stride 2 and padding 1."""
    return (n - 1) // 2 + 1


@dataclass(frozen=True)
class LatentCodes:
    """A pair's codes: ``global_code`` (B, global_dim), ``local_codes`` (B, local_dim, *coarse) spanning [-1, 1]."""

    global_code: torch.Tensor
    local_codes: torch.Tensor

    def at(self, points_norm: torch.Tensor) -> torch.Tensor:
        """The code at points (B, N, ndim): global code and interpolated local code, (B, N, global_dim + local_dim)."""
        n = points_norm.shape[1]
        local = sample_at_points(self.local_codes, points_norm).transpose(1, 2)
        return torch.cat([self.global_code[:, None, :].expand(-1, n, -1), local], dim=-1)

    def prior(self) -> torch.Tensor:
        """Mean L2 norm of the code vectors (the released code's prior): global codes (B,) and local codes (B, *coarse), summed."""
        return self.global_code.norm(dim=1).mean() + self.local_codes.norm(dim=1).mean()


class CodeEncoder(nn.Module):
    """CNN: fixed and moving images (B, 2, *shape) -> :class:`LatentCodes`.

    Stride-2 3-wide convolutions with LeakyReLU(0.2) (channels :data:`_ENCODER_CHANNELS`, at
    least six layers, more until no axis exceeds 3 voxels) -> flatten -> two linear layers -> global
    code. The local codes branch off (one 3-wide convolution) after the layer whose feature map is
    closest (in log size) to ``local_grid`` voxels per axis.
    """

    def __init__(self, shape: Sequence[int], global_dim: int, local_dim: int, local_grid: int) -> None:
        super().__init__()
        ndim = len(shape)
        conv = _CONV[ndim]
        sizes, channels = [tuple(shape)], [2]
        while len(sizes) <= len(_ENCODER_CHANNELS) or max(sizes[-1]) > 3:
            channels.append(_ENCODER_CHANNELS[min(len(sizes) - 1, len(_ENCODER_CHANNELS) - 1)])
            sizes.append(tuple(_conv_output_size(n) for n in sizes[-1]))
        self.layers = nn.ModuleList(
            nn.Sequential(conv(channels[i], channels[i + 1], 3, stride=2, padding=1), nn.LeakyReLU(0.2))
            for i in range(len(sizes) - 1)
        )
        misfit = [sum(abs(math.log(n / local_grid)) for n in size) for size in sizes[1:]]
        self.branch = misfit.index(min(misfit))
        self.coarse_shape = sizes[self.branch + 1]
        self.local_head = conv(channels[self.branch + 1], local_dim, 3, padding=1)
        self.global_head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels[-1] * math.prod(sizes[-1]), _GLOBAL_HIDDEN),
            nn.LeakyReLU(0.2),
            nn.Linear(_GLOBAL_HIDDEN, global_dim),
        )

    def forward(self, pair: torch.Tensor) -> LatentCodes:
        features = pair
        for layer in self.layers[: self.branch + 1]:
            features = layer(features)
        local = self.local_head(features)
        for layer in self.layers[self.branch + 1:]:
            features = layer(features)
        return LatentCodes(self.global_head(features), local)


class FourierFeatures(nn.Module):
    """Points (..., ndim) -> ``[x, sin(2 pi B x), cos(2 pi B x)]`` (..., ndim + 2 n), ``B ~ N(0, scale^2)`` fixed.

    ``scale`` is in cycles per normalised unit (the image spans 2 units).
    """

    def __init__(self, ndim: int, n_features: int, scale: float) -> None:
        super().__init__()
        self.register_buffer("frequencies", torch.randn(n_features, ndim) * scale)
        self.out_features = ndim + 2 * n_features

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        phase = 2.0 * math.pi * points @ self.frequencies.T
        return torch.cat([points, torch.sin(phase), torch.cos(phase)], dim=-1)


class ModulatedSiren(nn.Module):
    """Displacement ``u(x | z)``: features of ``x`` -> ``layers`` sine layers -> linear head.

    Layer ``i``: ``h_i = g_i * sin(omega * (W_i h_{i-1} + b_i))`` with the modulation
    ``g_i = relu(W'_i [g_{i-1}, z] + b'_i)`` (``g_1`` from ``z`` alone). Sine layers use the SIREN
    initialisation; the head starts at zero, so the field starts at the identity map.
    """

    def __init__(
        self, in_features: int, code_features: int, hidden: int, layers: int, out_features: int, omega: float
    ) -> None:
        super().__init__()
        self.omega = omega
        self.synthesis = nn.ModuleList(nn.Linear(in_features if i == 0 else hidden, hidden) for i in range(layers))
        self.modulator = nn.ModuleList(
            nn.Linear(code_features if i == 0 else hidden + code_features, hidden) for i in range(layers)
        )
        self.head = nn.Linear(hidden, out_features)
        with torch.no_grad():
            for i, layer in enumerate(self.synthesis):
                bound = 1.0 / layer.in_features if i == 0 else math.sqrt(6.0 / layer.in_features) / omega
                layer.weight.uniform_(-bound, bound)
            self.head.weight.zero_()
            self.head.bias.zero_()

    def forward(self, features: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """``features`` (B, N, in_features), ``code`` (B, N, code_features) -> (B, N, out_features)."""
        hidden, modulation = features, None
        for synthesis, modulator in zip(self.synthesis, self.modulator):
            modulation = F.relu(modulator(code if modulation is None else torch.cat([modulation, code], dim=-1)))
            hidden = modulation * torch.sin(self.omega * synthesis(hidden))
        return self.head(hidden)


class NePhiNet(nn.Module):
    """Encoder + forward and inverse fields for images of ``shape``; see the module docstring.

    ``pair_global`` / ``pair_local`` hold one pair's codes during instance optimisation
    (:meth:`start_instance`); training never uses them (they get no gradient).
    """

    def __init__(self, shape: Sequence[int], params: Mapping[str, Any]) -> None:
        super().__init__()
        self.shape = tuple(int(n) for n in shape)
        ndim = len(self.shape)
        self.encoder = CodeEncoder(self.shape, params["global_dim"], params["local_dim"], params["local_grid"])
        self.features = FourierFeatures(ndim, params["fourier_features"], params["fourier_scale"])
        code_features = params["global_dim"] + params["local_dim"]

        def field() -> ModulatedSiren:
            return ModulatedSiren(
                self.features.out_features, code_features, params["hidden"], params["hidden_layers"], ndim, params["omega"]
            )

        self.forward_field, self.inverse_field = field(), field()
        self.pair_global = nn.Parameter(torch.zeros(1, params["global_dim"]))
        self.pair_local = nn.Parameter(torch.zeros(1, params["local_dim"], *self.encoder.coarse_shape))
        self.instance = False

    def codes(self, fixed: torch.Tensor, moving: torch.Tensor) -> LatentCodes:
        """The codes of images (B, 1, *shape): the encoder's, or the pair's during instance optimisation."""
        if self.instance:
            return LatentCodes(self.pair_global, self.pair_local)
        return self.encoder(torch.cat([fixed, moving], dim=1))

    def start_instance(self, fixed: torch.Tensor, moving: torch.Tensor) -> None:
        """Initialise the pair codes from the encoder for one pair (1, 1, *shape) and use them from now on."""
        with torch.no_grad():
            codes = self.encoder(torch.cat([fixed, moving], dim=1))
            self.pair_global.copy_(codes.global_code)
            self.pair_local.copy_(codes.local_codes)
        self.instance = True

    def instance_parameters(self) -> list[nn.Parameter]:
        """Pair codes and both fields (not the encoder)."""
        return [self.pair_global, self.pair_local, *self.forward_field.parameters(), *self.inverse_field.parameters()]

    def displacement(self, direction: Direction, points_norm: torch.Tensor, codes: LatentCodes) -> torch.Tensor:
        """Normalised displacement (B, N, ndim) of the ``direction`` map at points (B, N, ndim)."""
        field = self.forward_field if direction == "forward" else self.inverse_field
        return field(self.features(points_norm), codes.at(points_norm))

    def point_map(self, direction: Direction, codes: LatentCodes) -> Callable[[torch.Tensor], torch.Tensor]:
        """The map ``x -> x + displacement(x)`` on normalised points (B, N, ndim)."""
        return lambda points: points + self.displacement(direction, points, codes)

    def dense_displacement(self, direction: Direction, codes: LatentCodes, chunk: int) -> torch.Tensor:
        """Voxel displacement (B, ndim, *shape) on the whole grid, ``chunk`` points at a time, no gradient.

        Beyond the output, memory holds one chunk's points and activations.
        """
        ndim, n_voxels = len(self.shape), math.prod(self.shape)
        ref = codes.global_code
        disp_norm = ref.new_empty(ref.shape[0], n_voxels, ndim)
        with torch.no_grad():
            for start in range(0, n_voxels, chunk):
                stop = min(start + chunk, n_voxels)
                points = grid_points_norm(self.shape, start, stop, ref).expand(ref.shape[0], -1, -1)
                disp_norm[:, start:stop] = self.displacement(direction, points, codes)
        return disp_norm_to_vox(disp_norm.transpose(1, 2).reshape(-1, ndim, *self.shape), self.shape)


def _similarity(
    point_map: Callable[[torch.Tensor], torch.Tensor], reference: torch.Tensor, source: torch.Tensor, n: int
) -> torch.Tensor:
    """``1 - NCC(reference(x), source(map(x)))`` over ``n`` random points ``x`` per pair; images (B, 1, *spatial)."""
    points = uniform_points(reference.shape[0], n, reference.dim() - 2, reference)
    return point_ncc_loss(sample_at_points(reference, points), sample_at_points(source, point_map(points)))


REG_POINT_BOUNDS = (10, 500)
"""Published bounds of the GradICON point count when it is a ratio of the voxels."""


def point_count(params: Mapping[str, Any], kind: Literal["sim", "reg"], n_voxels: int) -> int:
    """Random points per pair of loss term ``kind``: ``<kind>_points``, or ``<kind>_ratio`` x
    ``n_voxels`` when that ratio is set (GradICON's count bounded to :data:`REG_POINT_BOUNDS`, as
    published; at least 2 similarity points)."""
    ratio = params[f"{kind}_ratio"]
    if ratio is None:
        return int(params[f"{kind}_points"])
    count = round(ratio * n_voxels)
    return max(2, count) if kind == "sim" else min(max(count, REG_POINT_BOUNDS[0]), REG_POINT_BOUNDS[1])


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "published": {
        "hidden": 512, "sim_ratio": 0.02, "reg_ratio": 1e-4, "batch_size": 32, "io_steps": 800,
        "lambda_gradicon": 10.0, "lambda_latent": 0.01, "global_dim": 32, "local_dim": 32,
    },
}


class NePhi(LearnedMethod):
    """NePhi (see the module docstring): learned codes + per-pair instance optimisation."""

    name = "nephi"
    requires_checkpoint = False
    presets = PRESETS
    params = param_schema(
        *common_params(steps=2000, lr=1e-4, io_lr=1e-3, batch_size=2),
        Param("preset", str, "default", "parameter set applied before explicit values", choices=tuple(PRESETS)),
        Param("io_steps", int, 300, "instance-optimisation steps on each pair at registration "
              "(0 with a checkpoint: pure prediction; > 0 needed without one)", minimum=0),
        Param("global_dim", int, 32, "global latent code size", minimum=1),
        Param("local_dim", int, 32, "local latent code size (per coarse grid point)", minimum=1),
        Param("local_grid", int, 8, "target size per axis of the coarse grid of local codes", minimum=1),
        Param("hidden", int, 128, "width of the MLP layers (paper: 512)", minimum=1),
        Param("hidden_layers", int, 2, "sine layers per MLP", minimum=1),
        Param("fourier_features", int, 32, "random Fourier frequencies of the coordinate encoding", minimum=1),
        Param("fourier_scale", float, 1.0, "std of the Fourier frequencies, cycles per normalised unit", minimum=0.0),
        Param("omega", float, 30.0, "sine frequency factor (SIREN omega_0)", minimum=0.0, exclusive_minimum=True),
        Param("sim_points", int, 4096, "random points per pair and direction for the NCC", minimum=2),
        Param("reg_points", int, 256, "random points per pair for GradICON", minimum=1),
        Param("sim_ratio", float, None, "similarity points as a fraction of the voxels (none: sim_points; published 0.02)",
              minimum=0.0, exclusive_minimum=True, maximum=1.0, nullable=True),
        Param("reg_ratio", float, None, "GradICON points as a fraction of the voxels, bounded to 10-500 "
              "(none: reg_points; published 1e-4)", minimum=0.0, exclusive_minimum=True, maximum=1.0, nullable=True),
        Param("lambda_gradicon", float, 10.0, "GradICON weight (released scale: both compositions, entries averaged, "
              "losses.gradicon_symmetric_loss)", minimum=0.0),
        Param("gradicon_delta", float, 1e-3, "GradICON finite-difference step, normalised units",
              minimum=0.0, exclusive_minimum=True),
        Param("lambda_latent", float, 0.01, "latent code prior weight (mean L2 norm of the codes, as released)", minimum=0.0),
        Param("eval_chunk", int, 16384, "points per chunk when the dense fields are evaluated "
              "(about 4 KiB of activations each at hidden=128)", minimum=1),
    )

    def build_model(self, shape: tuple[int, ...], params: Mapping[str, Any]) -> NePhiNet:
        return NePhiNet(shape, params)

    def loss(self, model: nn.Module, batch: Batch, params: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        fixed, moving = batch["fixed"], batch["moving"]
        codes = model.codes(fixed, moving)
        forward, inverse = model.point_map("forward", codes), model.point_map("inverse", codes)
        n_voxels = fixed[0, 0].numel()
        n = point_count(params, "sim", n_voxels)
        sim = 0.5 * (_similarity(forward, fixed, moving, n) + _similarity(inverse, moving, fixed, n))
        points = uniform_points(fixed.shape[0], point_count(params, "reg", n_voxels), fixed.dim() - 2, fixed)
        gradicon = gradicon_symmetric_loss(forward, inverse, points, params["gradicon_delta"])
        prior = codes.prior()
        total = sim + params["lambda_gradicon"] * gradicon + params["lambda_latent"] * prior
        return total, {"sim": sim, "gradicon": gradicon, "latent": prior}

    def instance_loss(
        self, model: nn.Module, batch: Batch, params: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`loss` on the pair's own codes (taken from the encoder at the first step)."""
        if not model.instance:
            model.start_instance(batch["fixed"], batch["moving"])
        return self.loss(model, batch, params)

    def instance_parameters(self, model: nn.Module) -> Iterable[nn.Parameter]:
        return model.instance_parameters()

    def predict(self, model: nn.Module, fixed: torch.Tensor, moving: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
        """Forward displacement (B, ndim, *spatial), fixed-grid voxels (fixed point x -> moving point x + u(x))."""
        with torch.no_grad():
            codes = model.codes(fixed, moving)
        return model.dense_displacement("forward", codes, params["eval_chunk"])

    def predict_inverse(
        self, model: nn.Module, fixed: torch.Tensor, moving: torch.Tensor, params: Mapping[str, Any]
    ) -> torch.Tensor:
        """Inverse displacement (B, ndim, *spatial), voxels (moving point y -> fixed point y + v(y))."""
        with torch.no_grad():
            codes = model.codes(fixed, moving)
        return model.dense_displacement("inverse", codes, params["eval_chunk"])


METHOD = NePhi()
