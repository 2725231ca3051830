"""The conda env files work from where Snakemake 9 copies them (``.snakemake/conda/<hash>.yaml``,
snakemake/deployment/conda.py ``create_env``): no entry may be a path relative to envs/, and the
jobs find this checkout's package through PYTHONPATH (common.smk)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from registration_core.core.yaml_io import load_yaml_file

from support.paths import REPO_ROOT


@pytest.mark.parametrize("name", ["registration.yaml", "workflow.yaml"])
def test_env_file_has_no_relative_path_once_copied(tmp_path: Path, name: str) -> None:
    copied = tmp_path / ".snakemake" / "conda" / "0123abcd.yaml"
    copied.parent.mkdir(parents=True)
    shutil.copyfile(REPO_ROOT / "envs" / name, copied)
    env = load_yaml_file(copied)
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    for entry in pip:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.+-]+", entry), f"{name}: {entry!r} is not a pin"


def test_jobs_import_the_package_from_the_workflow_folder() -> None:
    common = (REPO_ROOT / "workflow" / "rules" / "common.smk").read_text()
    assert re.search(r"os\.environ\.update\(PYTHONPATH=.*workflow\.basedir", common)
    assert (REPO_ROOT / "registration_core" / "__main__.py").is_file()
