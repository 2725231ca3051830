"""Training-time augmentation for unsupervised learned methods: synthetic self-pairs.

A dozen training images give about a hundred ordered inter-subject pairs: too few for a network to
learn registration, and each of them mixes anatomy that no smooth map explains. With
``synth_fraction`` > 0, that fraction of a batch's pairs is instead one training image ``I`` and a
copy deformed by a fresh random smooth field (RegNet's idea, here without supervision: the method's
own similarity loss still drives training, the field is never shown to the network):

    ``fixed = I + noise``, ``moving = I o (id + u) + noise``

``u``: :func:`registration_core.data.synth.random_smooth_displacement` (single frequency, control
spacing ``synth_grid_mm`` mm, Gaussian 5 mm, not integrated), its largest magnitude drawn
``U(0, synth_max_disp_mm)`` mm. Noise: Gaussian, ``synth_noise`` times the image's range. The
fixed point ``x`` corresponds to the moving point ``(id + u)^-1 (x)``; the loss never needs it.

Tensors: images (B, 1, *spatial) float32 on ``device``; fields (1, ndim, *spatial) in voxels.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from registration_core.core.params import Param
from registration_core.core.spatial import warp
from registration_core.data import synth
from registration_core.methods.training import Batch, TrainingSet, pair_batch, random_pairs

SMOOTH_SIGMA_MM = 5.0


def augment_params(fraction: float = 0.5, max_disp_mm: float = 10.0) -> list[Param]:
    """The augmentation parameters (``synth_fraction``, ``synth_max_disp_mm``, ``synth_grid_mm``, ``synth_noise``)."""
    return [
        Param(
            "synth_fraction", float, fraction,
            "fraction of training pairs that are an image and its own synthetic smooth deformation (0: none, as published)",
            minimum=0.0, maximum=1.0,
        ),
        Param("synth_max_disp_mm", float, max_disp_mm, "largest displacement of the synthetic training fields (mm)",
              minimum=0.0, exclusive_minimum=True),
        Param("synth_grid_mm", float, 40.0, "B-spline control spacing of the synthetic training fields (mm)",
              minimum=0.0, exclusive_minimum=True),
        Param("synth_noise", float, 0.01, "Gaussian noise on synthetic pairs (fraction of the image range)", minimum=0.0),
    ]


def synthetic_self_pair(
    image: torch.Tensor, spacing_mm: tuple[float, ...], rng: np.random.Generator, params: Mapping[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fixed, moving), each (1, 1, *spatial), from one image (1, 1, *spatial); see the module docstring."""
    shape = tuple(image.shape[2:])
    max_disp = params["synth_max_disp_mm"] * float(rng.uniform(0.05, 1.0))
    disp = synth.random_smooth_displacement(
        shape, spacing_mm, rng, grid_spacing_mm=params["synth_grid_mm"], max_disp_mm=max_disp,
        smooth_sigma_mm=SMOOTH_SIGMA_MM, diffeomorphic=False,
    )
    moving = warp(image, torch.from_numpy(disp)[None].to(image))
    scale = params["synth_noise"] * float(image.max() - image.min())
    noise = torch.from_numpy(rng.standard_normal((2, *image.shape)).astype(np.float32)).to(image) * scale
    return image + noise[0], moving + noise[1]


def augmented_pair_batch(
    data: TrainingSet, rng: np.random.Generator, params: Mapping[str, Any], device: torch.device
) -> Batch:
    """``batch_size`` pairs: each a synthetic self-pair with probability ``synth_fraction``, else two
    distinct training images (as :meth:`LearnedMethod.sample_batch`). ``fixed``/``moving`` (B, 1, *spatial).

    Label maps are dropped when any pair is synthetic (the deformed copy has none). With
    ``synth_fraction = 0`` the batch equals :func:`pair_batch` of :func:`random_pairs`.
    """
    count = params["batch_size"]
    if params["synth_fraction"] <= 0:
        return pair_batch(data, random_pairs(len(data), count, rng), device)
    synthetic = rng.random(count) < params["synth_fraction"]
    real = pair_batch(data, random_pairs(len(data), count, rng), torch.device("cpu"))
    if not synthetic.any():
        return {key: value.to(device) for key, value in real.items()}
    fixed, moving = real["fixed"].clone(), real["moving"].clone()
    spacing = tuple(float(s) for s in data.reference.spacing)
    for b in np.flatnonzero(synthetic):
        index = int(rng.integers(len(data)))
        f, m = synthetic_self_pair(data.images[index : index + 1], spacing, rng, params)
        fixed[b], moving[b] = f[0], m[0]
    return {"fixed": fixed.to(device), "moving": moving.to(device)}
