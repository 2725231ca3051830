"""The conda environments (envs/*.yaml) pin exactly the packages and versions of pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
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


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def _env(name: str) -> tuple[dict, list[str]]:
    """The env file's YAML and its pip requirements, the local package (``-e ..``) left out."""
    env = yaml.safe_load((ENVS / name).read_text())
    pip_sections = [item["pip"] for item in env["dependencies"] if isinstance(item, dict) and "pip" in item]
    assert len(pip_sections) == 1, f"{name}: expected one pip section"
    requirements = pip_sections[0]
    assert "-e .." in requirements, f"{name}: the pip section must install this repository (-e ..)"
    return env, [r for r in requirements if r != "-e .."]


EXPECTED = {
    "registration.yaml": ["dependencies"],
    "workflow.yaml": ["dependencies", "workflow", "cluster", "test"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_env_pins_match_pyproject(name: str) -> None:
    project = _pyproject()
    expected: dict[str, str] = {}
    for group in EXPECTED[name]:
        expected.update(_pins(project["dependencies"] if group == "dependencies" else project["optional-dependencies"][group]))
    _, requirements = _env(name)
    assert _pins(requirements) == expected


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
