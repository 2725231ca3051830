"""The config schema documents every plug-in key exactly as the registries declare it."""

from __future__ import annotations

import inspect

import jsonschema
import pytest

from registration_core.core.params import json_schema
from registration_core.errors import InputError
from registration_core.methods import available_methods, get_method
from registration_core.preprocessing.align import ALIGN_PARAMS, affine_align
from registration_core.preprocessing.lung import lung_mask
from registration_core.preprocessing.steps import STEPS
from registration_core.study.config import load_schema
from registration_core.study.schema import generated_block, generated_text

DECLARATIONS = {
    **{f"step_{name}": dict(step.settings) for name, step in STEPS.items()},
    "align_settings": ALIGN_PARAMS,
    **{f"method_{name}": dict(get_method(name).params) for name in available_methods()},
}


def test_the_schema_file_holds_the_current_generated_block() -> None:
    """Run `python -m registration_core.study.schema` after changing a declaration."""
    assert generated_block() == generated_text()


@pytest.mark.parametrize("entry", sorted(DECLARATIONS))
def test_every_declared_key_is_documented_with_its_type_default_bounds_and_choices(entry: str) -> None:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    documented = schema["$defs"][entry]
    declared = DECLARATIONS[entry]
    assert documented["additionalProperties"] is False
    assert [key for key in documented["properties"] if key != "step"] == list(declared)
    for name, param in declared.items():
        fragment = documented["properties"][name]
        assert fragment == json_schema(param)
        if not param.required:
            default = list(param.default) if isinstance(param.default, tuple) else param.default
            assert fragment["default"] == default
            # the documented default is a value the fragment itself accepts
            assert jsonschema.Draft202012Validator({k: v for k, v in fragment.items() if k != "default"}).is_valid(default)
        if param.choices is not None:
            enum = fragment["enum"] if "enum" in fragment else fragment["anyOf"][0]["enum"]  # nullable: [choices, null]
            assert enum == list(param.choices)
    assert documented.get("required", []) == (["step"] if entry.startswith("step_") else []) + [
        name for name, p in declared.items() if p.required
    ]


def test_step_and_method_entries_cover_every_plug_in() -> None:
    defs = load_schema()["$defs"]
    assert {f"step_{name}" for name in STEPS} | {f"method_{name}" for name in available_methods()} | {"align_settings"} <= set(defs)
    assert "step_affine_align" in defs and "reference" in defs["step_affine_align"]["required"]


@pytest.mark.parametrize(("entry", "key", "value", "accepted"), [
    ("step_slice", "index", 3, True), ("step_slice", "index", "middle", True), ("step_slice", "index", 0.5, True),
    ("step_slice", "index", -1, False), ("step_slice", "index", 1.5, False), ("step_slice", "axis", 3, False),
    ("step_resample", "spacing", [1.0, 2.0], True), ("step_resample", "spacing", [1.0], False),
    ("step_resample", "spacing", 0, False), ("step_clip", "percentiles", [1, 99], True),
    ("step_clip", "percentiles", [1, 101], False), ("align_settings", "shrink_factors", [4, 2, 1], True),
    ("align_settings", "shrink_factors", [4, 0], False), ("align_settings", "sampling", 0, False),
    ("method_nodeo", "ncc_window", 9, True), ("method_nodeo", "ncc_window", 8, False),
    ("method_regnet", "output_patch", 16, True), ("method_regnet", "output_patch", 15, False),
])
def test_the_documented_fragment_and_the_declaration_accept_the_same_values(
    entry: str, key: str, value: object, accepted: bool
) -> None:
    fragment = load_schema()["$defs"][entry]["properties"][key]
    assert jsonschema.Draft202012Validator(fragment).is_valid(value) is accepted
    try:
        DECLARATIONS[entry][key].parse(value, entry)
        parsed = True
    except Exception:
        parsed = False
    assert parsed is accepted


def test_lung_mask_step_defaults_are_the_functions_defaults() -> None:
    defaults = {name: p.default for name, p in inspect.signature(lung_mask).parameters.items() if name != "image"}
    assert {name: STEPS["lung_mask"].settings[name].default for name in defaults} == defaults


def test_the_affine_method_has_the_align_vocabulary() -> None:
    affine = get_method("affine")
    assert set(affine.params) == set(ALIGN_PARAMS) | {"threads"}
    assert affine.resolve_params({"shrink_factors": "4x2"})["shrink_factors"] == (4, 2)
    with pytest.raises(InputError, match="method 'affine': parameter 'sampling' must be a number > 0 <= 1"):
        affine.resolve_params({"sampling": 0})
    with pytest.raises(InputError, match="affine_align: setting 'sampling' must be a number > 0 <= 1"):
        affine_align(None, None, sampling=0)  # type: ignore[arg-type]  # settings are checked before the images
