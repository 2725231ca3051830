"""The `reference` preset of NODEO reproduces the public reference code's update rule.

The reference (github.com/yifannnwu/NODEO-DIR) integrates t = [0, 1] with its own Euler solver that
takes ``|t1 - t0| = 1`` step of 0.001, so ``phi = id + 0.001 F(id)`` (normalised [-1, 1]
coordinates), and its velocity loss is ``mean |phi_1 - phi_0|^2`` with weight 5e-5. Below, that
rule is written out from scratch (losses in float64 with the reference's formulas, its plain
Adam-amsgrad step) and compared loss by loss with ``Nodeo.register`` started from the same weights.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from registration_core.core.io import Image
from registration_core.methods import get_method
from registration_core.methods.nodeo import VelocityNet, encoder_depth

NODEO = get_method("nodeo")
ITERATIONS = 6


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pair(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    fixed = ndimage.gaussian_filter(rng.random(shape), 2.5)
    fixed = ((fixed - fixed.min()) / (fixed.max() - fixed.min())).astype(np.float32)
    moving = ndimage.shift(fixed, [1.5, -1.0, 2.0][: len(shape)], order=1, mode="nearest").astype(np.float32)
    return fixed, moving


def _window_sum(x: torch.Tensor, win: int) -> torch.Tensor:
    """Zero-padded centred window sum of (1, 1, *spatial) along every axis (the reference's cumsum trick)."""
    half = win // 2
    for axis in range(2, x.dim()):
        pad = [0, 0] * (x.dim() - 2)
        k = 2 * (x.dim() - 1 - axis)
        pad[k], pad[k + 1] = half + 1, half
        c = torch.cumsum(F.pad(x, pad), dim=axis)
        n = x.shape[axis]
        x = c.narrow(axis, win, n) - c.narrow(axis, 0, n)
    return x


def _ncc_loss(warped: torch.Tensor, fixed: torch.Tensor, win: int) -> torch.Tensor:
    """The reference's Loss.NCC: 1 - mean(cross^2 / (var_I var_J + 1e-5)), float64."""
    i, j = fixed.double(), warped.double()
    size = float(win ** (i.dim() - 2))
    i_sum, j_sum = _window_sum(i, win), _window_sum(j, win)
    i2, j2, ij = _window_sum(i * i, win), _window_sum(j * j, win), _window_sum(i * j, win)
    u_i, u_j = i_sum / size, j_sum / size
    cross = ij - u_j * i_sum - u_i * j_sum + u_i * u_j * size
    var_i = i2 - 2 * u_i * i_sum + u_i * u_i * size
    var_j = j2 - 2 * u_j * j_sum + u_j * u_j * size
    return 1.0 - (cross * cross / (var_i * var_j + 1e-5)).mean()


def _forward_diff(x: torch.Tensor, axis: int) -> torch.Tensor:
    n = x.shape[axis]
    return x.narrow(axis, 1, n - 1) - x.narrow(axis, 0, n - 1)


def _det_forward(disp: torch.Tensor) -> torch.Tensor:
    """det(I + grad u) by forward differences on the voxels whose forward neighbours exist, (1, *(n - 1))."""
    ndim = disp.shape[1]
    crop = (slice(None), slice(None)) + tuple(slice(0, n - 1) for n in disp.shape[2:])
    # cols[c][:, r] = d u_r / d x_c on the cropped grid
    cols = [_forward_diff(disp, 2 + c)[crop] for c in range(ndim)]
    m = torch.stack([torch.stack([cols[c][:, r] for c in range(ndim)], dim=-1) for r in range(ndim)], dim=-2)
    return torch.linalg.det(m + torch.eye(ndim, dtype=m.dtype))


def _written_out_losses(fixed: np.ndarray, moving: np.ndarray, params: dict) -> list[dict[str, float]]:
    """Losses of the reference's update rule, iteration by iteration, from the seeded initial weights."""
    shape = fixed.shape
    ndim = len(shape)
    torch.manual_seed(params["seed"])  # the weights Nodeo.register starts from
    net = VelocityNet(
        shape, params["channels"], params["bottleneck"], encoder_depth(shape), 2,
        params["smoothing_kernel"], (params["smoothing_window"],) * ndim, params["smoothing_passes"], params["gaussian_nsig"],
    )
    opt = torch.optim.Adam(net.parameters(), lr=5e-3, amsgrad=True)
    axes = [torch.linspace(-1.0, 1.0, n) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]
    fixed_t, moving_t = torch.from_numpy(fixed)[None, None], torch.from_numpy(moving)[None, None]
    to_vox = torch.tensor([(n - 1) / 2.0 for n in shape]).view(1, ndim, *([1] * ndim))
    out = []
    for _ in range(ITERATIONS):
        phi = grid + 0.001 * net(grid)  # one Euler step of 0.001
        step = phi - grid  # the reference's all_v = all_phi[1:] - all_phi[:-1]
        warped = F.grid_sample(moving_t, phi.flip(1).permute(0, *range(2, ndim + 2), 1),
                               align_corners=True, padding_mode="border")
        disp = step * to_vox
        sim = _ncc_loss(warped, fixed_t, 21)
        v = step.pow(2).sum(dim=1).mean()
        jac = F.relu(0.5 - _det_forward(disp)).pow(2).mean()
        df = sum(_forward_diff(disp, a).pow(2).mean() for a in range(2, ndim + 2))
        total = sim + 5e-5 * v + 2.5 * jac + 0.05 * df
        terms = {"total": total, "sim": sim, "v": v, "J": jac, "df": df}
        out.append({k: float(t.detach()) for k, t in terms.items()})
        opt.zero_grad()
        total.float().backward()
        opt.step()
    return out


@pytest.mark.parametrize("shape", [(32, 36, 40), (48, 56)])
def test_reference_preset_follows_the_reference_update_rule(shape: tuple[int, ...]) -> None:
    fixed, moving = _pair(shape)
    params = NODEO.resolve_params({"preset": "reference", "iterations": ITERATIONS, "device": "cpu"})
    result = NODEO.register(Image(fixed, np.eye(4)), Image(moving, np.eye(4)), params)
    expected = _written_out_losses(fixed, moving, params)
    ours = result.loss_history[:ITERATIONS]
    assert ours[-1]["total"] < ours[0]["total"]  # it moves: the comparison is not between identities
    for it, (a, b) in enumerate(zip(ours, expected)):
        assert a["total"] == pytest.approx(b["total"], rel=1e-5, abs=1e-7), it
        assert a["sim"] == pytest.approx(b["sim"], rel=1e-5, abs=1e-7), it
        assert a["J"] == pytest.approx(b["J"], rel=1e-4, abs=1e-9), it
        assert a["df"] == pytest.approx(b["df"], rel=1e-4, abs=1e-12), it
        # ours records mean |F|^2 per unit time; the reference's term is mean |0.001 F|^2 with weight 5e-5
        assert params["lambda_v"] * a["v"] == pytest.approx(5e-5 * b["v"], rel=1e-4, abs=1e-18), it


def test_a_unit_euler_step_is_not_the_reference_rule() -> None:
    """The comparison above can fail: phi = id + F(id) (time_span 1, lambda_v 5e-5) drifts from it."""
    shape = (32, 36, 40)
    fixed, moving = _pair(shape)
    params = NODEO.resolve_params(
        {"preset": "reference", "iterations": ITERATIONS, "device": "cpu", "time_span": 1.0, "lambda_v": 5e-5}
    )
    result = NODEO.register(Image(fixed, np.eye(4)), Image(moving, np.eye(4)), params)
    expected = _written_out_losses(fixed, moving, params)
    assert abs(result.loss_history[ITERATIONS - 1]["sim"] - expected[-1]["sim"]) > 1e-4
