"""Synthetic self-pair augmentation of the unsupervised learned methods (methods/augment.py)."""

from __future__ import annotations

import numpy as np
import torch

from registration_core.core.io import Image
from registration_core.methods.augment import augmented_pair_batch
from registration_core.methods.training import TrainingSet, pair_batch, random_pairs

PARAMS = {"batch_size": 4, "synth_fraction": 1.0, "synth_max_disp_mm": 10.0, "synth_grid_mm": 40.0, "synth_noise": 0.0}


def _data() -> TrainingSet:
    x = np.linspace(0, 1, 40, dtype=np.float32)
    images = torch.stack([torch.from_numpy(np.outer(x, x ** (k + 1)))[None] for k in range(3)])  # (3, 1, 40, 40)
    return TrainingSet(images, None, Image(images[0, 0].numpy(), np.diag([2.0, 2.0, 1.0, 1.0])), ("a", "b", "c"))


def test_no_synthetic_pairs_is_the_plain_pair_batch() -> None:
    data = _data()
    got = augmented_pair_batch(data, np.random.default_rng(3), {**PARAMS, "synth_fraction": 0.0}, torch.device("cpu"))
    expected = pair_batch(data, random_pairs(3, 4, np.random.default_rng(3)), torch.device("cpu"))
    assert all(torch.equal(got[key], expected[key]) for key in ("fixed", "moving"))


def test_synthetic_pairs_are_an_image_and_its_smoothly_deformed_copy() -> None:
    """Without noise the fixed image is a training image exactly; the moving one differs from it
    inside, equals it on the border (the field is 0 there) and stays in the image's range."""
    data = _data()
    batch = augmented_pair_batch(data, np.random.default_rng(0), PARAMS, torch.device("cpu"))
    assert batch["fixed"].shape == batch["moving"].shape == (4, 1, 40, 40)
    for fixed, moving in zip(batch["fixed"], batch["moving"]):
        assert any(torch.equal(fixed, image) for image in data.images)
        assert float((moving - fixed).abs().max()) > 1e-3
        assert torch.allclose(moving[0, 0], fixed[0, 0], atol=1e-5) and torch.allclose(moving[0, -1], fixed[0, -1], atol=1e-5)
        assert float(moving.min()) >= -1e-5 and float(moving.max()) <= 1 + 1e-5
