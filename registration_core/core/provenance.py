"""What a result depends on and what it cost: software versions, peak memory, the torch device."""

from __future__ import annotations

import platform
import resource
import sys
from typing import TYPE_CHECKING

import numpy as np

from registration_core import __version__
from registration_core.errors import InputError

if TYPE_CHECKING:
    import torch


def software_versions() -> dict[str, str]:
    """Versions of Python and the numerical libraries a result depends on (torch when loaded)."""
    import nibabel
    import scipy
    import SimpleITK

    versions = {
        "python": platform.python_version(),
        "registration_core": __version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "nibabel": nibabel.__version__,
        "SimpleITK": SimpleITK.Version_VersionString(),
    }
    if "torch" in sys.modules:
        import torch

        versions["torch"] = str(torch.__version__)  # TorchVersion is not a plain str
    if "torchdiffeq" in sys.modules:
        import torchdiffeq

        versions["torchdiffeq"] = torchdiffeq.__version__
    return versions


def peak_memory_mb() -> tuple[float, float | None]:
    """Peak resident set size of this process and peak CUDA allocation (None without CUDA), in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    cuda = None
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            cuda = torch.cuda.max_memory_allocated() / 2**20
    return rss, cuda


def resolve_device(name: str) -> "torch.device":
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is an InputError."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("parameter 'device' is cuda but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)
