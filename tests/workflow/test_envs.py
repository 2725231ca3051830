"""The lock (constraints.txt), pyproject.toml's ranges, the Makefile and the conda environments
(envs/*.yaml) agree: every env pins pyproject's packages at the lock's versions, and the lock's
versions lie in pyproject's ranges."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement

from support.paths import REPO_ROOT

ENVS = REPO_ROOT / "envs"


def _normalise(name: str) -> str:
    """PEP 503 normalised distribution name (``PyYAML`` -> ``pyyaml``, ``a_b`` -> ``a-b``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(requirements: list[str]) -> dict[str, str]:
    """``{name: version}`` of ``name==version`` requirements; anything else fails the test."""
    pins = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+-]+)", requirement.strip())
        assert match, f"{requirement!r} is not pinned as name==version"
        pins[_normalise(match.group(1))] = match.group(2)
    return pins


def _lock() -> dict[str, str]:
    """constraints.txt as ``{name: version}`` (comments and blank lines skipped)."""
    lines = (REPO_ROOT / "constraints.txt").read_text().splitlines()
    return _pins([line for line in lines if line.strip() and not line.lstrip().startswith("#")])


def _requirements(groups: list[str]) -> dict[str, Requirement]:
    """pyproject's requirements of ``groups`` (``dependencies`` or extras) by normalised name."""
    project = _pyproject()
    found: dict[str, Requirement] = {}
    for group in groups:
        entries = project["dependencies"] if group == "dependencies" else project["optional-dependencies"][group]
        found.update({_normalise(r.name): r for r in map(Requirement, entries)})
    return found


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def _env(name: str) -> tuple[dict, list[str]]:
    """The env file's YAML and its pip requirements (pins only: no relative path, see test_conda_envs.py)."""
    env = yaml.safe_load((ENVS / name).read_text())
    pip_sections = [item["pip"] for item in env["dependencies"] if isinstance(item, dict) and "pip" in item]
    assert len(pip_sections) == 1, f"{name}: expected one pip section"
    return env, list(pip_sections[0])


EXPECTED = {
    "registration.yaml": ["dependencies", "ants", "elastix"],
    "workflow.yaml": ["dependencies", "workflow", "cluster", "test", "ants", "elastix"],
}
MAKE_EXTRAS = ["workflow", "cluster", "test", "ants", "elastix"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_env_pins_are_the_locked_versions_of_pyproject_packages(name: str) -> None:
    lock = _lock()
    packages = _requirements(EXPECTED[name])
    _, requirements = _env(name)
    assert _pins(requirements) == {package: lock[package] for package in packages}


def test_lock_versions_satisfy_pyproject_ranges() -> None:
    lock = _lock()
    for name, requirement in _requirements(["dependencies", *_pyproject()["optional-dependencies"]]).items():
        assert name in lock, f"{name} is required by pyproject.toml but not locked in constraints.txt"
        assert requirement.specifier.contains(lock[name], prereleases=True), (
            f"constraints.txt has {name}=={lock[name]}, outside pyproject.toml's {requirement}"
        )


def test_lock_is_exact_and_keeps_the_cpu_torch() -> None:
    lock = _lock()
    assert "registration-core" not in lock
    # torch==2.13.0 also matches the local CPU wheel 2.13.0+cpu; never a CUDA build from the index
    assert lock["torch"] == "2.13.0"
    assert lock["numpy"].startswith("2.") and lock["antspyx"] == "0.6.3" and lock["itk-elastix"] == "0.25.4"


def test_make_setup_installs_with_the_lock() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert f"-c constraints.txt -e '.[{','.join(MAKE_EXTRAS)}]'" in makefile
    assert re.search(r"^\$\(STAMP\): pyproject\.toml constraints\.txt$", makefile, re.M)
    assert set(MAKE_EXTRAS) == set(_pyproject()["optional-dependencies"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_env_python_matches_requires_python(name: str) -> None:
    env, _ = _env(name)
    minimum = re.fullmatch(r">=\s*(\d+\.\d+)", _pyproject()["requires-python"]).group(1)
    conda_specs = [item for item in env["dependencies"] if isinstance(item, str)]
    assert f"python={minimum}" in conda_specs
    assert "pip" in conda_specs
    assert "conda-forge" in env["channels"]


def test_every_env_file_is_checked() -> None:
    assert sorted(p.name for p in ENVS.glob("*.yaml")) == sorted(EXPECTED)



def test_rules_use_the_job_env() -> None:
    common = (REPO_ROOT / "workflow" / "rules" / "common.smk").read_text()
    env = re.search(r'^ENV = "([^"]+)"$', common, re.M).group(1)
    assert (REPO_ROOT / "workflow" / "rules" / env).resolve() == ENVS / "registration.yaml"
