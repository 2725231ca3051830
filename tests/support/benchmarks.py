"""The benchmark scripts (benchmarks/*.py, not a package) as modules, for tests that reuse their
data preparation or their tables."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np

from registration_core.core.io import Image, load_image

from support.paths import REPO_ROOT


def benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` loaded as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def held_out_pairs(bench: ModuleType, files: dict[str, tuple[Path, Path]]) -> Iterator[tuple[str, str, Image, Image, np.ndarray, np.ndarray]]:
    """The held-out pairs of ``benchmarks/learned_2d.py`` (``bench``) from its prepared ``files``:
    (fixed name, moving name, fixed image, moving image, fixed labels, moving labels)."""
    for fixed_name, moving_name, kind in bench.PAIRS:
        if kind == "held-out":
            yield (
                fixed_name, moving_name, load_image(files[fixed_name][0]), load_image(files[moving_name][0]),
                load_image(files[fixed_name][1], "labels").data, load_image(files[moving_name][1], "labels").data,
            )
