"""The project's house rules, checked on the tree: package shape, module and class sizes, a thin
workflow, a short README, docs generated from the registries kept current."""

from __future__ import annotations

import ast
import contextlib
import io
from pathlib import Path

from registration_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "registration_core"


def test_package_top_level_holds_at_most_eight_modules() -> None:
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= 8, modules


def test_every_subpackage_opens_with_a_docstring() -> None:
    for init in PACKAGE.rglob("__init__.py"):
        assert ast.get_docstring(ast.parse(init.read_text())), init


def test_no_module_over_700_lines_and_no_class_over_200() -> None:
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert text.count("\n") <= 700, f"{path}: {text.count(chr(10))} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 200, f"{path}: class {node.name} has {length} lines"


def test_workflow_glue_is_thin_and_the_readme_short() -> None:
    assert (ROOT / "workflow" / "rules" / "common.smk").read_text().count("\n") <= 120
    assert (ROOT / "README.md").read_text().count("\n") <= 250


def test_methods_page_is_the_registry_as_rendered_now() -> None:
    """docs/methods.md is made by `make docs`; rerun it after changing a method's parameters."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["methods"]) == 0
    assert f"```text\n{out.getvalue()}```\n" in (ROOT / "docs" / "methods.md").read_text()
