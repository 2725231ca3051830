"""The project's command line run as a user runs it: a fresh ``python -m registration_core``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support.paths import REPO_ROOT


def run_cli(*args: object, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``python -m registration_core ARGS`` from the repository root with this interpreter;
    stdout and stderr captured as text. ``check``: raise when the exit status is not 0 (the
    error then shows the command's stderr)."""
    result = subprocess.run(
        [sys.executable, "-m", "registration_core", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}: {result.stderr.strip()}")
    return result


def assert_not_written(*paths: Path) -> None:
    """None of ``paths`` exists (a failed command leaves nothing that looks finished)."""
    present = [str(p) for p in paths if Path(p).exists()]
    assert not present, f"written despite the failure: {present}"
