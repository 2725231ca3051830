"""NODEO: registration as the flow of a neural ODE (Wu et al., CVPR 2022), for 2D and 3D images.

Per pair, a small network ``F_theta`` maps the current deformed grid ``phi_t`` (normalised
coordinates, (1, ndim, *spatial)) to a smooth velocity field; the deformation is the solution of
``d phi / dt = F_theta(phi)`` from the identity at ``t = 0`` to ``t = time_span``, integrated with
torchdiffeq. ``theta`` is optimised with Adam (amsgrad) on

    L = L_sim + lambda_v * L_v + lambda_J * L_J + lambda_df * L_df

``L_sim = 1 - mean(local NCC^2)`` (window ``ncc_window``), ``L_v`` the mean squared velocity
(normalised units per unit time), ``L_J = mean(relu(jacobian_threshold - detJ)^2)`` and ``L_df``
the diffusion regulariser of the voxel displacement.

Image pyramid (``shrink_factors``, coarse to fine; one level at full resolution by default): level
``l`` registers the images shrunk by ``f_l`` (:func:`shrink`: Gaussian of sigma ``f_l / 2`` voxels,
:func:`shrunk_shape` voxels spanning the same extent) with its own network, NCC and smoothing windows
divided by ``f_l`` (:func:`level_windows`) and at most ``iterations`` steps under the same stop
rule; it starts from the coarser levels' field, which its own flow is composed with (see
:func:`_fit_level`), so each level's iterate 0 is the coarser result.

Window sizes: ``ncc_window`` and ``smoothing_window`` count voxels of the image, or, with
``window_spacing`` set, voxels of that size (mm), converted per axis to the image's spacing. The
paper's windows (21 and 15) were set on 1 mm brains; ``window_spacing: 1.0`` keeps their extent in
mm on images of another spacing (11 and 7 voxels at 2 mm), which the released code does not do.

Differences from the public reference code (github.com/yifannnwu/NODEO-DIR): the network's first linear layer is
sized from the image shape (the reference hard-codes 864, so only volumes with every axis in
(128, 192] run); lambdas are floats; the returned field is the best iterate by total loss
(the reference's selection never updates); upsampling and smoothing of the velocity are one
separable linear map applied as one matrix product per axis, and the gradients of the NCC and of
the Jacobian and diffusion terms are written out (docs/nodeo-speed.md). The `reference` preset
reproduces the reference's update rule (one Euler step of 0.001, its velocity term;
tests/methods/test_nodeo_reference.py); what remains different
there: the zero last layer, float32 NCC (the reference's is float64), the exact gradient at the
identity (the reference's hand-written adjoint evaluates F at phi_1), voxel units (n - 1) / 2 per
normalised unit (the reference scales by n / 2 and stacks its grid's channels in reverse order).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchdiffeq import odeint, odeint_adjoint

from registration_core.core.filters import apply_separable, box_mean_matrix, gaussian_matrix, linear_upsample_matrix
from registration_core.core.io import Image
from registration_core.core.losses import LocalNCC, jacobian_diffusion_losses, velocity_magnitude_loss
from registration_core.core.params import Param
from registration_core.core.progress import report
from registration_core.core.provenance import resolve_device
from registration_core.core.spatial import disp_norm_to_vox, identity_grid_norm, sample
from registration_core.errors import InputError
from registration_core.methods import Method, RegistrationResult

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_LINEAR_MODE = {2: "bilinear", 3: "trilinear"}


class VelocityNet(nn.Module):
    """``F_theta``: deformed grid (1, ndim, *shape) in [-1, 1] -> smooth velocity (1, ndim, *shape).

    Half-resolution input -> ``n_convs`` stride-2 convolutions (``channels`` features, replicate
    padding, ReLU after all but the last) -> linear to ``bottleneck`` (ReLU) -> linear to a velocity
    on a grid ``2**upsample_levels`` times coarser -> linear upsampling by 2 per level to ``shape`` ->
    ``smoothing_passes`` passes of a box (AK) or Gaussian (GK) filter of ``smoothing_window`` voxels
    (one odd count per axis).
    The last layer starts at zero (the reference initialises it randomly), so the flow starts at the identity.
    """

    def __init__(
        self,
        shape: Sequence[int],
        channels: int,
        bottleneck: int,
        n_convs: int,
        upsample_levels: int,
        smoothing_kernel: str,
        smoothing_window: Sequence[int],
        smoothing_passes: int,
        gaussian_nsig: float,
    ) -> None:
        super().__init__()
        self.shape = tuple(int(n) for n in shape)
        ndim = len(self.shape)
        conv = _CONV[ndim]
        self.mode = _LINEAR_MODE[ndim]
        self.convs = nn.ModuleList(
            conv(ndim if i == 0 else channels, channels, 3, stride=2, padding=1, padding_mode="replicate")
            for i in range(n_convs)
        )
        encoded = [n // 2 for n in self.shape]  # F.interpolate(scale_factor=0.5) floors
        for _ in range(n_convs):
            encoded = [math.ceil(n / 2) for n in encoded]
        self.coarse_shapes = [
            tuple(math.ceil(n / 2**level) for n in self.shape) for level in range(upsample_levels, -1, -1)
        ]
        self.lin1 = nn.Linear(channels * math.prod(encoded), bottleneck)
        self.lin2 = nn.Linear(bottleneck, ndim * math.prod(self.coarse_shapes[0]))
        # zero velocity at the start: iterate 0 is the identity, so the best iterate is never worse
        nn.init.zeros_(self.lin2.weight)
        nn.init.zeros_(self.lin2.bias)
        self.smoothing_kernel = smoothing_kernel
        self.smoothing_window = tuple(smoothing_window)
        self.smoothing_passes = smoothing_passes
        self.gaussian_nsig = gaussian_nsig
        for d, mat in enumerate(self._field_matrices()):
            self.register_buffer(f"field_matrix_{d}", mat, persistent=False)

    @property
    def field_matrices(self) -> list[torch.Tensor]:
        """The per-axis matrices of :meth:`_field_matrices` (buffers: they follow ``.to(device)``)."""
        return [getattr(self, f"field_matrix_{d}") for d in range(len(self.shape))]

    def forward(self, phi_norm: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(phi_norm, scale_factor=0.5, mode=self.mode)
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = F.relu(x)
        x = F.relu(self.lin1(x.flatten()))
        v = self.lin2(x).view(1, len(self.shape), *self.coarse_shapes[0])
        # upsampling by 2 per level, then the smoothing passes: one separable linear map, applied as
        # one GEMM per axis (the same arithmetic as F.interpolate + box/Gaussian filters, rounding aside)
        return apply_separable(v, self.field_matrices)

    def _field_matrices(self) -> list[torch.Tensor]:
        """Per axis d, the (shape[d], coarse[d]) float32 matrix smoothing^passes @ upsample_levels."""
        mats = []
        for d, n in enumerate(self.shape):
            m = torch.eye(self.coarse_shapes[0][d], dtype=torch.float64)
            for prev, size in zip(self.coarse_shapes[:-1], self.coarse_shapes[1:]):
                m = linear_upsample_matrix(prev[d], size[d]) @ m
            if self.smoothing_kernel == "AK":
                smooth = box_mean_matrix(n, self.smoothing_window[d])
            else:
                smooth = gaussian_matrix(n, self.smoothing_window[d], self.gaussian_nsig)
            for _ in range(self.smoothing_passes):
                m = smooth @ m
            mats.append(m.float().contiguous())
        return mats


class _Dynamics(nn.Module):
    """torchdiffeq right-hand side ``f(t, phi) = F_theta(phi)`` (autonomous)."""

    def __init__(self, net: VelocityNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        return self.net(phi)


def _odd(name: str, default: int, help: str) -> Param:
    return Param(name, int, default, help, minimum=1, parity="odd")


PARAMS: dict[str, Param] = {
    p.name: p
    for p in [
        Param("preset", str, "default", "parameter set applied before explicit values", choices=("reference", "default", "pyramid")),
        Param("iterations", int, 300, "optimizer steps (at most, per pyramid level)", minimum=1, maximum=100_000),
        Param("shrink_factors", list, (1,), "image pyramid, coarse to fine (e.g. 4x2x1); each level starts from the "
              "coarser one's field; 1: one level at full resolution", item=int, minimum=1, maximum=32),
        Param("lr", float, 5e-3, "Adam (amsgrad) learning rate", minimum=0.0, exclusive_minimum=True),
        Param("smoothing_kernel", str, "AK", "velocity smoothing: AK box average, GK Gaussian", choices=("AK", "GK")),
        _odd("smoothing_window", 15, "smoothing window in voxels (of window_spacing when set)"),
        Param("smoothing_passes", int, 1, "smoothing passes", minimum=0, maximum=20),
        Param("gaussian_nsig", float, 2.0, "GK window half-width in standard deviations", minimum=0.0, exclusive_minimum=True, maximum=10.0),
        _odd("ncc_window", 21, "local NCC window in voxels (of window_spacing when set)"),
        Param("window_spacing", float, None, "voxel size (mm) at which ncc_window and smoothing_window are given: "
              "each axis's window becomes the nearest odd voxel count of the same extent at the image's spacing "
              "(1.0: the paper's windows, set at 1 mm, keep their size in mm; none: voxels of the image)",
              minimum=0.0, exclusive_minimum=True, nullable=True),
        Param("lambda_J", float, 2.5, "weight of the negative-Jacobian penalty", minimum=0.0),
        Param("lambda_df", float, 0.05, "weight of the diffusion regulariser", minimum=0.0),
        Param("lambda_v", float, 5e-5, "weight of the velocity magnitude", minimum=0.0),
        Param("jacobian_threshold", float, 0.5, "detJ below this is penalised by L_J"),
        Param("ode_method", str, "euler", "torchdiffeq solver", choices=("euler", "midpoint", "rk4", "dopri5")),
        Param("step_size", float, None, "fixed solver step (none: one step per interval)", minimum=0.0, exclusive_minimum=True, nullable=True),
        Param("time_steps", int, 2, "time points from 0 to time_span (>= 2)", minimum=2, maximum=1000),
        Param("time_span", float, 1.0, "integration end time", minimum=0.0, exclusive_minimum=True, maximum=100.0),
        Param("tolerance", float, 1e-3, "rtol and atol of dopri5", minimum=0.0, exclusive_minimum=True),
        Param("adjoint", bool, False, "use odeint_adjoint (memory O(1) in time steps)"),
        Param("channels", int, 32, "encoder features", minimum=1, maximum=1024),
        Param("bottleneck", int, 16, "bottleneck width", minimum=1, maximum=4096),
        Param("stop_patience", int, 0, "stop when the best total loss improved by less than stop_rel_tol over this many iterations (0: never)", minimum=0),
        Param("stop_rel_tol", float, 5e-3, "relative improvement that counts for stop_patience", minimum=0.0),
        Param("seed", int, 0, "random seed", minimum=0),
        Param("device", str, "auto", "auto uses CUDA when available", choices=("auto", "cpu", "cuda")),
    ]
}

REFERENCE_STEP = 0.001
"""The public reference code's Euler step (its STEP_SIZE); it takes one such step over t = [0, 1]."""
REFERENCE_LAMBDA_V = 5e-5
"""The reference's weight of mean |phi_1 - phi_0|^2 (normalised units, per Euler step, not per unit time)."""

# The reference's model and losses at full resolution, stopped when the loss has plateaued:
# the best total loss improving by less than 0.5% over 25 iterations (see docs/studies.md for
# the measured effect). The best measured trade-off on inter-subject brains, 2D and 3D
# (docs/nodeo-speed.md, benchmarks/nodeo_tradeoff.py).
_DEFAULT: dict[str, Any] = {
    "iterations": 300, "lr": 5e-3, "smoothing_kernel": "AK", "smoothing_window": 15,
    "smoothing_passes": 1, "gaussian_nsig": 2.0, "ncc_window": 21, "lambda_J": 2.5,
    "lambda_df": 0.05, "lambda_v": 5e-5, "ode_method": "euler", "step_size": None,
    "time_steps": 2, "time_span": 1.0, "shrink_factors": (1,), "stop_patience": 25, "stop_rel_tol": 5e-3,
}

PRESETS: dict[str, dict[str, Any]] = {
    # The public reference code's arithmetic. Its Euler(z0, n_steps=|t1 - t0|, f, step_size=0.001)
    # over t = [0, 1] takes ONE step of 0.001: phi = id + 0.001 F(id), i.e. the flow to t = 0.001
    # (time_span 0.001, one step). Its velocity loss is mean |phi_1 - phi_0|^2 = mean |0.001 F|^2
    # with weight 5e-5; ours is mean |(phi_1 - phi_0) / dt|^2 = mean |F|^2, so the same term needs
    # lambda_v = 5e-5 * 0.001^2 = 5e-11. Gaussian kernel nearly flat (nsig 0.1), 300 iterations.
    "reference": {
        "iterations": 300, "lr": 5e-3, "smoothing_kernel": "AK", "smoothing_window": 15,
        "smoothing_passes": 1, "gaussian_nsig": 0.1, "ncc_window": 21, "lambda_J": 2.5,
        "lambda_df": 0.05, "lambda_v": REFERENCE_LAMBDA_V * REFERENCE_STEP**2, "ode_method": "euler",
        "step_size": None, "time_steps": 2, "time_span": REFERENCE_STEP, "shrink_factors": (1,), "stop_patience": 0,
    },
    "default": _DEFAULT,
    # `default` on a three-level pyramid (4x2x1): measured better on brain slices with a known
    # smooth deformation up to 8 mm (Dice +0.004, end-point error -30 %), no better on
    # inter-subject pairs (2D +0.001, 3D -0.003) and slower there.
    "pyramid": {**_DEFAULT, "shrink_factors": (4, 2, 1)},
}

# Fixed architecture of the reference: five stride-2 convolutions, velocity predicted 4x coarser.
_N_CONVS = 5
_UPSAMPLE_LEVELS = 2
MIN_AXIS = 16
"""Smallest image axis (voxels) NODEO runs on: its encoder then has 3 stride-2 convolutions."""


def encoder_depth(shape: Sequence[int]) -> int:
    """Stride-2 convolutions of the encoder for an image of ``shape``: ``_N_CONVS`` (5, the reference's
    depth) when every axis has >= 64 voxels, one fewer per halving below that (16-31 voxels: 3), so
    the half-resolution input of the smallest axis is encoded down to 1-2 voxels and never padded
    out of nothing. InputError below :data:`MIN_AXIS`."""
    smallest = min(int(n) for n in shape)
    if smallest < MIN_AXIS:
        raise InputError(f"nodeo needs every image axis >= {MIN_AXIS} voxels, got shape {tuple(shape)}")
    return min(_N_CONVS, int(math.log2(smallest)) - 1)


def check_windows(windows: Mapping[str, Sequence[int]], params: Mapping[str, Any], shape: Sequence[int]) -> None:
    """InputError naming the parameter when a level's window (:func:`level_windows`, voxels per axis)
    exceeds ``2 * n - 1`` voxels on an axis of ``n`` voxels: from there on every window centred on
    the axis covers all of it, so a larger one only adds padding (the bound that depends on the image)."""
    for key, per_axis in windows.items():
        for window, n in zip(per_axis, shape):
            if window > 2 * int(n) - 1:
                raise InputError(
                    f"method 'nodeo': parameter '{key}' = {params[key]} exceeds {2 * int(n) - 1} voxels "
                    f"({window} voxels here; 2 n - 1 for an axis of {n} voxels of the image of shape {tuple(shape)})"
                )


class Nodeo(Method):
    """NODEO per-pair optimisation; see the module docstring."""

    name = "nodeo"
    params = PARAMS
    presets = PRESETS
    uses_torch = True
    min_size = MIN_AXIS

    def check_shape(
        self, shape: Sequence[int], params: Mapping[str, Any], spacing: Sequence[float] | None = None
    ) -> None:
        """Every axis >= :data:`MIN_AXIS` voxels at every pyramid level, and windows no larger than
        each level's image allows (:func:`check_windows`); InputError names ``shrink_factors``
        when a level would be too small. ``spacing`` (mm per axis) sizes the windows when
        ``window_spacing`` is set; without it their voxel counts are not checked then."""
        super().check_shape(shape, params, spacing)
        for factor in params["shrink_factors"]:
            level_shape = shrunk_shape(shape, factor)
            if min(level_shape) < MIN_AXIS:
                raise InputError(
                    f"method 'nodeo': parameter 'shrink_factors' = {'x'.join(map(str, params['shrink_factors']))}: "
                    f"factor {factor} shrinks the image of shape {tuple(shape)} to {level_shape}, below "
                    f"{MIN_AXIS} voxels on an axis"
                )
            if spacing is not None or params["window_spacing"] is None:
                check_windows(level_windows(params, factor, spacing or (1.0,) * len(shape)), params, level_shape)

    def register(self, fixed: Image, moving: Image, params: Mapping[str, Any]) -> RegistrationResult:
        device = resolve_device(params["device"])
        torch.manual_seed(params["seed"])
        shape = fixed.shape
        self.check_shape(shape, params, fixed.spacing)
        fixed_t = torch.from_numpy(np.ascontiguousarray(fixed.data, dtype=np.float32))[None, None].to(device)
        moving_t = torch.from_numpy(np.ascontiguousarray(moving.data, dtype=np.float32))[None, None].to(device)
        factors = params["shrink_factors"]
        clock = _Clock(params["iterations"] * len(factors))
        coarse: torch.Tensor | None = None  # the coarser levels' normalised displacement
        history: list[dict[str, float]] = []
        for level, factor in enumerate(factors):
            level_shape = shrunk_shape(shape, factor)
            start = None if coarse is None else upsample_norm_field(coarse, level_shape)
            fit = _fit_level(
                shrink(fixed_t, level_shape), shrink(moving_t, level_shape), params,
                level_windows(params, factor, fixed.spacing), start, clock,
            )
            history.extend({"level": level, "shrink": factor, **record} for record in fit.history)
            coarse = fit.disp_norm
        assert coarse is not None
        return RegistrationResult(
            disp_vox=disp_norm_to_vox(coarse, shape)[0].cpu().numpy().astype(np.float32),
            loss_history=history,
            best_iteration=fit.best_iteration,
            best_criterion="lowest total loss over all evaluated iterates of the finest level "
            "(0 = identity-initialised network on top of the coarser levels' field)",
            device=str(device),
        )


def shrunk_shape(shape: Sequence[int], factor: int) -> tuple[int, ...]:
    """Grid of a pyramid level: ``(n - 1) // factor + 1`` voxels per axis, spanning the same
    first-to-last voxel centres as ``shape`` (normalised coordinates are shared by all levels)."""
    return tuple((int(n) - 1) // factor + 1 for n in shape)


def level_windows(params: Mapping[str, Any], factor: int, spacing: Sequence[float]) -> dict[str, tuple[int, ...]]:
    """Voxel windows per axis of the level shrunk by ``factor`` of an image of ``spacing`` (mm per
    axis): ``ncc_window`` and ``smoothing_window`` keep their extent, so each is divided by ``factor``
    and, when ``window_spacing`` is set, by ``spacing / window_spacing`` (the windows are given in
    voxels of that size); rounded to the nearest odd count, at least 3 (NCC) and 1 (smoothing).
    Unchanged at ``factor`` 1 without ``window_spacing``."""
    scales = [factor * (1.0 if params["window_spacing"] is None else s / params["window_spacing"]) for s in spacing]

    def odd(window: int, smallest: int) -> tuple[int, ...]:
        return tuple(max(smallest, 2 * int(round((window / scale - 1) / 2)) + 1) for scale in scales)

    return {"ncc_window": odd(params["ncc_window"], 3), "smoothing_window": odd(params["smoothing_window"], 1)}


def shrink(image: torch.Tensor, level_shape: Sequence[int]) -> torch.Tensor:
    """``image`` (1, C, *shape) -> (1, C, *level_shape): per axis a Gaussian of sigma ``factor / 2``
    voxels (weights renormalised at the borders) then linear interpolation at the level's voxel
    centres (align_corners, the same span); one separable linear map. Unchanged when the shapes agree."""
    shape = image.shape[2:]
    if tuple(shape) == tuple(level_shape):
        return image
    mats = []
    for n, m in zip(shape, level_shape):
        factor = (n - 1) / max(m - 1, 1)
        half = max(1, int(math.ceil(factor)))
        smooth = gaussian_matrix(n, 2 * half + 1, 2.0 * half / factor)  # sigma = factor / 2 voxels
        smooth = smooth / smooth.sum(dim=1, keepdim=True)
        positions = torch.linspace(0.0, n - 1, m, dtype=torch.float64)
        weights = (1.0 - (positions[:, None] - torch.arange(n, dtype=torch.float64)[None, :]).abs()).clamp(min=0.0)
        mats.append((weights @ smooth).float().to(image.device))
    return apply_separable(image, mats)


def upsample_norm_field(field: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Normalised displacement (1, ndim, *coarse) -> (1, ndim, *shape) by linear interpolation
    (align_corners: normalised units do not change with the grid)."""
    return F.interpolate(field, size=tuple(shape), mode=_LINEAR_MODE[field.dim() - 2], align_corners=True)


class _Clock:
    """Wall time since the registration started and the iteration count over all levels (for progress lines)."""

    def __init__(self, planned: int) -> None:
        self.start = time.perf_counter()
        self.done = 0
        self.planned = planned

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


@dataclass
class _LevelFit:
    disp_norm: torch.Tensor  # best iterate's normalised displacement, coarser levels included, (1, ndim, *shape)
    history: list[dict[str, float]]
    best_iteration: int


def _fit_level(
    fixed_t: torch.Tensor,
    moving_t: torch.Tensor,
    params: Mapping[str, Any],
    windows: Mapping[str, tuple[int, ...]],
    start: torch.Tensor | None,
    clock: _Clock,
) -> _LevelFit:
    """Optimise one network on one pyramid level (images (1, 1, *shape)) with the level's voxel
    ``windows`` (:func:`level_windows`); ``start`` is the coarser levels' normalised displacement on
    this grid (None at the first level).

    The level's flow ``phi`` is composed with the start: the map is ``x -> phi(x) + start(phi(x))``
    (border padding), so similarity, Jacobian and diffusion terms score the whole deformation and
    iterate 0 (zero velocity) is the coarser levels' result; the velocity term is the level's own.
    """
    shape = tuple(fixed_t.shape[2:])
    device = fixed_t.device
    net = VelocityNet(
        shape, params["channels"], params["bottleneck"], encoder_depth(shape), _UPSAMPLE_LEVELS,
        params["smoothing_kernel"], windows["smoothing_window"], params["smoothing_passes"],
        params["gaussian_nsig"],
    ).to(device)
    dynamics = _Dynamics(net)
    grid0 = identity_grid_norm(shape, device=device)
    times = torch.linspace(0.0, params["time_span"], params["time_steps"], device=device)
    solve = odeint_adjoint if params["adjoint"] else odeint
    solver_kwargs: dict[str, Any] = {"method": params["ode_method"]}
    if params["ode_method"] == "dopri5":
        solver_kwargs.update(rtol=params["tolerance"], atol=params["tolerance"])
    elif params["step_size"] is not None:
        solver_kwargs["options"] = {"step_size": params["step_size"]}
    similarity = LocalNCC(fixed_t, windows["ncc_window"])
    weights = {"v": params["lambda_v"], "J": params["lambda_J"], "df": params["lambda_df"]}
    optimizer = torch.optim.Adam(net.parameters(), lr=params["lr"], amsgrad=True)

    history: list[dict[str, float]] = []
    best_total, best_disp, best_iteration = math.inf, None, -1
    best_so_far: list[float] = []  # running best total loss, one entry per evaluated iterate
    patience = params["stop_patience"]
    for iteration in range(params["iterations"] + 1):
        last = iteration == params["iterations"]
        with torch.set_grad_enabled(not last):
            phis = solve(dynamics, grid0, times, **solver_kwargs)  # (T, 1, ndim, *shape)
            dt = (times[1:] - times[:-1]).view(-1, *([1] * (phis.dim() - 1)))
            velocities = (phis[1:] - phis[:-1]) / dt
            points = phis[-1] if start is None else phis[-1] + sample(start, phis[-1])
            disp_norm = points - grid0
            disp_vox = disp_norm_to_vox(disp_norm, shape)
            neg_jacobian, diffusion = jacobian_diffusion_losses(disp_vox, params["jacobian_threshold"])
            terms = {
                "sim": similarity(sample(moving_t, points)),
                "v": velocity_magnitude_loss(velocities, channel_dim=2),
                "J": neg_jacobian,
                "df": diffusion,
            }
            total = terms["sim"] + sum(weights[k] * terms[k] for k in weights)
        record = {"iteration": iteration, "elapsed_s": clock.elapsed(), "total": float(total.detach())}
        record.update({k: float(v.detach()) for k, v in terms.items()})
        history.append(record)
        report(clock.done, clock.planned, **{k: v for k, v in record.items() if k not in ("iteration", "elapsed_s")})
        if not math.isfinite(record["total"]):
            raise RuntimeError(f"nodeo: loss became {record['total']} at iteration {iteration}; lower 'lr'")
        if record["total"] < best_total:
            best_total, best_disp, best_iteration = record["total"], disp_norm.detach(), iteration
        best_so_far.append(best_total)
        if patience and iteration >= patience:
            if best_so_far[-1 - patience] - best_total < params["stop_rel_tol"] * abs(best_total):
                break
        if not last:
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            clock.done += 1
    assert best_disp is not None
    return _LevelFit(best_disp, history, best_iteration)


METHOD = Nodeo()
