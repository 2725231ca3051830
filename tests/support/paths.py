"""Where the repository and the shared real data are."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository root (tests/support/paths.py -> ..)."""
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()
"""Real images for tests (see its README); tests that need it skip when it is absent."""
