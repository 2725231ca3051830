"""Registration methods and their registry: one module per method, named after the method,
exposing ``METHOD``; :mod:`.training` holds the training loop shared by the learned methods,
:mod:`.augment` and :mod:`.regnet_sampling` support modules of some of them, and ``_sitk`` the
SimpleITK plumbing of the classical ones.

Adding a method is adding ``registration_core/methods/<name>.py`` with a :class:`Method` subclass
instance called ``METHOD``; the CLI, the config validation and the workflow find it by name. Modules
are imported on first use so that asking for a SimpleITK method does not import torch.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cache
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from registration_core.core.io import Image
from registration_core.core.params import Param, parse_params
from registration_core.errors import InputError


@dataclass
class RegistrationResult:
    """What a method returns for one fixed/moving pair.

    ``disp_vox``: (ndim, *spatial) float32 displacement in voxels of the fixed grid, mapping a fixed
    point ``x`` to the moving point ``x + u(x)``. ``loss_history``: one dict per evaluated iterate
    (``iteration``, ``elapsed_s`` since the start, ``total`` and one entry per loss term). ``best_iteration``: the iterate whose
    field is returned, chosen by ``best_criterion``. ``inverse_disp_vox``: (ndim, *spatial) the
    inverse map's displacement (moving point ``y`` -> fixed point ``y + v(y)``, voxels, on the same
    grid), for methods that estimate one; written as ``inverse_displacement.nii.gz``.
    """

    disp_vox: np.ndarray
    loss_history: list[dict[str, float]] = field(default_factory=list)
    best_iteration: int | None = None
    best_criterion: str | None = None
    device: str = "cpu"
    inverse_disp_vox: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Method(ABC):
    """A registration method: a parameter schema, optional presets and :meth:`register`."""

    name: ClassVar[str]
    params: ClassVar[Mapping[str, Param]]
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    uses_torch: ClassVar[bool] = False
    trainable: ClassVar[bool] = False
    """True for methods trained over a dataset first (see :mod:`registration_core.methods.training`)."""
    min_size: ClassVar[int] = 1
    """Smallest image axis, voxels, the method registers. The study checks every prepared image's
    grid (predicted from its header) against :meth:`check_shape` before any job runs."""

    def check_shape(
        self, shape: Sequence[int], params: Mapping[str, Any], spacing: Sequence[float] | None = None
    ) -> None:
        """InputError when the method cannot register images of ``shape`` (voxels; ``spacing`` mm per
        axis where known) with the resolved ``params``: an axis below :attr:`min_size`; methods add
        limits that depend on parameters."""
        if min(int(n) for n in shape) < self.min_size:
            raise InputError(f"{self.name} needs every image axis >= {self.min_size} voxels, got shape {tuple(shape)}")

    def resolve_params(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults + preset + ``raw`` overrides, validated (InputError names the parameter)."""
        return parse_params(f"method '{self.name}'", self.params, raw, self.presets or None)

    @abstractmethod
    def register(self, fixed: Image, moving: Image, params: Mapping[str, Any]) -> RegistrationResult:
        """Register ``moving`` onto ``fixed`` (same grid) with resolved ``params``."""


SUPPORT_MODULES = frozenset({"training", "augment", "regnet_sampling"})
"""Modules of this package that are shared machinery, not methods."""


def available_methods() -> list[str]:
    """Names of all registered methods (modules of this package)."""
    return sorted(
        m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_") and m.name not in SUPPORT_MODULES
    )


@cache
def get_method(name: str) -> Method:
    """The :class:`Method` called ``name``; InputError listing the available ones otherwise."""
    names = available_methods()
    if name not in names:
        raise InputError(f"unknown method '{name}' (available: {', '.join(names)})")
    return importlib.import_module(f"{__name__}.{name}").METHOD
