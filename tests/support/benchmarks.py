"""The benchmark scripts (benchmarks/*.py, not a package) as modules, for tests that reuse their
data preparation or their tables."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from support.paths import REPO_ROOT


def benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` loaded as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
