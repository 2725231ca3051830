"""Every rule name a user meets in a Snakemake log is listed in docs/rules.md (generated from the
registries), including the variants the example studies generate."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from registration_core.preprocessing.steps import STEPS
from registration_core.study.config import load_config
from registration_core.study.plan import Study
from registration_core.study.rules import PairRules, SubjectRules, rule_names, rule_names_markdown, variant_name

from support.paths import REPO_ROOT, SHARED_DATA

DOCS = REPO_ROOT / "docs" / "rules.md"
STUDIES = sorted((REPO_ROOT / "config" / "studies").glob("*.yaml")) + [REPO_ROOT / "config" / "config.yaml"]


def study_rule_names(study: Study) -> set[str]:
    """The names the .smk files give the study's variant rules, through the same helpers."""
    subjects, pairs = SubjectRules(study), PairRules(study)
    names = {subjects.step_rule_name(step, kinds, last) for step, kinds, last in subjects.step_rules()}
    names |= {variant_name("prepare", kinds, subjects.prepare_variants) for kinds in subjects.prepare_variants}
    names |= {variant_name("align", kinds, subjects.align_variants) for kinds in subjects.align_variants}
    names |= {variant_name("register", kinds, pairs.register_variants) for kinds in pairs.register_variants}
    return names


def test_rules_page_is_current() -> None:
    """docs/rules.md is made by `make docs`; rerun it after adding a step or a rule."""
    assert DOCS.read_text() == rule_names_markdown()


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_every_variant_of_the_example_studies_is_listed(path: Path) -> None:
    if "shared/data" in path.read_text() and not SHARED_DATA.is_dir():
        pytest.skip(f"{path.name} reads {SHARED_DATA}, which is absent")
    study = Study(load_config(path), REPO_ROOT)
    missing = study_rule_names(study) - set(rule_names(list(STEPS)))
    assert not missing, missing


@pytest.mark.slow
def test_a_real_dry_run_names_only_listed_rules(tmp_path: Path) -> None:
    snakemake = Path(sys.executable).parent / "snakemake"
    result = subprocess.run(
        [str(snakemake), "--snakefile", str(REPO_ROOT / "Snakefile"), "--directory", str(tmp_path), "-n", "--cores", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    table = result.stdout[result.stdout.index("Job stats:"):]
    ran = set(re.findall(r"^(\w+)\s+\d+$", table, re.M)) - {"total"}
    assert ran and not ran - set(rule_names(list(STEPS))), ran


def test_no_two_rules_share_a_name() -> None:
    """Snakemake refuses a workflow that defines a name twice: the registry's steps, the fixed rules
    and the variants are all distinct, and a step named like a fixed rule is refused by name."""
    names = rule_names(list(STEPS))
    assert "make_mask" in names and "lung_mask" in names
    with pytest.raises(ValueError, match="'all' would name two rules"):
        rule_names(["all"])
