"""GradICON loss against hand-computed Jacobians of affine and elementwise maps."""

from __future__ import annotations

import pytest
import torch

from registration_core.core.losses import gradicon_loss, gradicon_symmetric_loss


def _affine(matrix: list[list[float]], offset: list[float]):
    """The map x -> A x + b on points (..., N, ndim), float64."""
    a = torch.tensor(matrix, dtype=torch.float64)
    b = torch.tensor(offset, dtype=torch.float64)
    return lambda p: p @ a.T + b


def _points(ndim: int, n: int = 50, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, n, ndim, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1


@pytest.mark.parametrize("delta", [1e-3, None])
@pytest.mark.parametrize("ndim", [2, 3])
def test_exact_inverse_affine_pair_has_zero_loss(ndim: int, delta: float | None) -> None:
    matrix = [[1.2, 0.3, -0.1], [0.1, 0.8, 0.2], [-0.2, 0.1, 1.1]]
    a = torch.tensor(matrix, dtype=torch.float64)[:ndim, :ndim]
    b = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)[:ndim]
    forward = _affine(a.tolist(), b.tolist())
    inverse = lambda p: (p - b) @ torch.linalg.inv(a).T  # noqa: E731
    assert float(gradicon_loss(forward, inverse, _points(ndim), delta).detach()) < 1e-12


@pytest.mark.parametrize("delta", [1e-3, None])
@pytest.mark.parametrize(
    "forward,inverse,expected",
    [
        # J = A B; loss = ||A B - I||_F^2, the same at every point
        (([[2.0, 0.0], [0.0, 1.0]], [0.5, 0.0]), ([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0]), 1.0),
        # A B = [[1.25, 0.5], [0.5, 1]] -> 0.25^2 + 0.5^2 + 0.5^2 = 0.5625
        (([[1.0, 0.5], [0.0, 1.0]], [0.0, 0.0]), ([[1.0, 0.0], [0.5, 1.0]], [0.3, 0.0]), 0.5625),
        # diag(1, 2, 3) -> 0 + 1 + 4
        (
            ([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0]], [0.0, 0.0, 0.0]),
            ([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], [0.0, 0.0, 0.1]),
            5.0,
        ),
    ],
)
def test_non_inverse_affine_pair_gives_the_hand_computed_value(forward, inverse, expected, delta) -> None:
    ndim = len(forward[1])
    loss = gradicon_loss(_affine(*forward), _affine(*inverse), _points(ndim), delta)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)


def test_finite_differences_match_autograd_and_the_analytic_value_for_a_curved_map() -> None:
    """forward(x) = x + c sin(x) per coordinate, inverse = identity: J = diag(1 + c cos x)."""
    c = 0.3
    forward = lambda p: p + c * torch.sin(p)  # noqa: E731
    identity = lambda p: p  # noqa: E731
    points = _points(3, n=200)
    expected = float((c * torch.cos(points)).pow(2).sum(-1).mean())
    finite = float(gradicon_loss(forward, identity, points, 1e-4).detach())
    exact = float(gradicon_loss(forward, identity, points, None).detach())
    assert exact == pytest.approx(expected, rel=1e-9)
    assert finite == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("delta", [1e-3, None])
def test_loss_is_differentiable_in_the_map_parameters(delta: float | None) -> None:
    """d/ds ||diag(s, 1) - I||_F^2 = 2 (s - 1) with the inverse the identity."""
    scale = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    forward = lambda p: torch.stack([scale * p[..., 0], p[..., 1]], dim=-1)  # noqa: E731
    loss = gradicon_loss(forward, lambda p: p, _points(2), delta)
    loss.backward()
    assert float(scale.grad) == pytest.approx(1.0, rel=1e-6)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="points must have shape"):
        gradicon_loss(lambda p: p, lambda p: p, torch.zeros(10, 4))
    with pytest.raises(ValueError, match="delta must be > 0"):
        gradicon_loss(lambda p: p, lambda p: p, torch.zeros(10, 2), delta=0.0)


@pytest.mark.parametrize("delta", [1e-3, None])
def test_symmetric_gradicon_is_the_released_formula_on_a_hand_made_pair(delta: float | None) -> None:
    """phi(x) = A x, psi(x) = B x: J(phi o psi) = AB, J(psi o phi) = BA; the released scale averages
    the 4 entries of (J - I)^2 and the two directions: ((0.1485 + 0.1605) / 2) / 4 = 0.038625."""
    a, b = [[1.1, 0.2], [0.0, 0.9]], [[1.0, 0.0], [0.3, 1.0]]
    # AB - I = [[0.16, 0.2], [0.27, -0.1]] -> 0.1485; BA - I = [[0.1, 0.2], [0.33, -0.04]] -> 0.1605
    value = float(gradicon_symmetric_loss(_affine(a, [0.1, 0.0]), _affine(b, [0.0, -0.2]), _points(2), delta).detach())
    assert value == pytest.approx(0.038625, rel=1e-6)
    one_way = float(gradicon_loss(_affine(a, [0.1, 0.0]), _affine(b, [0.0, -0.2]), _points(2), delta).detach())
    assert one_way == pytest.approx(0.1485, rel=1e-6)
