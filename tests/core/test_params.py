"""Parameter parsing: types, ranges, presets and one-line errors naming the parameter."""

from __future__ import annotations

import pytest

from registration_core.core.params import Param, parse_assignments, parse_params
from registration_core.errors import InputError
from registration_core.methods import available_methods, get_method

SCHEMA = {
    p.name: p
    for p in [
        Param("preset", str, "a", "", choices=("a", "b")),
        Param("lr", float, 0.1, "", minimum=0.0, exclusive_minimum=True),
        Param("iterations", int, 10, "", minimum=1),
        Param("adjoint", bool, False, ""),
        Param("step", float, None, "", nullable=True, minimum=0.0, exclusive_minimum=True),
    ]
}
PRESETS = {"a": {}, "b": {"lr": 0.5, "iterations": 3}}


def test_defaults_presets_and_overrides() -> None:
    assert parse_params("m", SCHEMA, {}, PRESETS) == {
        "preset": "a", "lr": 0.1, "iterations": 10, "adjoint": False, "step": None
    }
    values = parse_params("m", SCHEMA, {"preset": "b", "iterations": "7", "adjoint": "true", "step": "0.25"}, PRESETS)
    assert values == {"preset": "b", "lr": 0.5, "iterations": 7, "adjoint": True, "step": 0.25}


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"foo": 1}, "unknown parameter 'foo'"),
        ({"lr": "-0.1"}, "parameter 'lr' must be a number > 0"),
        ({"lr": "fast"}, "parameter 'lr' must be a number"),
        ({"lr": "nan"}, "parameter 'lr'"),
        ({"iterations": "0"}, "parameter 'iterations' must be an integer >= 1"),
        ({"iterations": "2.5"}, "parameter 'iterations'"),
        ({"iterations": 2.5}, "parameter 'iterations'"),
        ({"adjoint": "maybe"}, "parameter 'adjoint' must be true or false"),
        ({"preset": "c"}, "parameter 'preset' must be one of a, b"),
        ({"iterations": "none"}, "parameter 'iterations'"),
    ],
)
def test_bad_values_name_the_parameter(raw: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_params("method 'm'", SCHEMA, raw, PRESETS)


def test_parse_assignments() -> None:
    assert parse_assignments(["a=1", " b = x=y "]) == {"a": "1", "b": "x=y"}
    with pytest.raises(InputError, match="key=value"):
        parse_assignments(["novalue"])
    with pytest.raises(InputError, match="given twice"):
        parse_assignments(["a=1", "a=2"])


def test_registry_lists_and_finds_nodeo() -> None:
    assert "nodeo" in available_methods()
    nodeo = get_method("nodeo")
    assert nodeo.name == "nodeo" and nodeo.uses_torch
    expected = {
        "preset", "iterations", "lr", "smoothing_kernel", "smoothing_window", "smoothing_passes", "ncc_window",
        "lambda_J", "lambda_df", "lambda_v", "ode_method", "step_size", "time_steps", "adjoint", "seed", "device",
    }
    assert expected <= set(nodeo.params)
    with pytest.raises(InputError, match="unknown method 'nope' \\(available: .*nodeo"):
        get_method("nope")


def test_nodeo_rejects_even_windows_and_accepts_fractional_lambda() -> None:
    nodeo = get_method("nodeo")
    with pytest.raises(InputError, match="'ncc_window' must be odd"):
        nodeo.resolve_params({"ncc_window": "8"})
    assert nodeo.resolve_params({"lambda_J": "2.5"})["lambda_J"] == 2.5
    reference = nodeo.resolve_params({"preset": "reference"})
    assert (reference["iterations"], reference["lr"], reference["ode_method"], reference["time_steps"]) == (
        300, 5e-3, "euler", 2,
    )


# --------------------------------------------------------------------- declared constraints

LISTS = {
    p.name: p
    for p in [
        Param("shrink", list, (4, 2, 1), "", item=int, minimum=1),
        Param("sigmas", list, (2.0, 1.0, 0.0), "", item=float, minimum=0.0, length_of="shrink"),
        Param("iterations", list, (100,), "", item=int, minimum=1, length_of="shrink", length_rule="equal_or_one"),
        Param("features", list, (8, 8, 8), "", item=int, minimum=1, length_of="shrink", length_rule="at_least"),
        Param("pair", list, None, "", item=float, minimum=0.0, maximum=100.0, min_items=2, max_items=2, nullable=True),
        Param("window", int, 9, "", minimum=1, parity="odd"),
        Param("patch", int, 24, "", minimum=2, parity="even"),
        Param("odd_list", list, (3,), "", item=int, minimum=1, parity="odd"),
        Param("index", object, "middle", "", alternatives=(
            Param("index", int, None, "", minimum=0), Param("index", str, None, "", choices=("middle",)),
            Param("index", float, None, "", minimum=0.0, maximum=1.0))),
        Param("reference", str, None, "", required=True),
    ]
}


def resolve(**raw: object) -> dict:
    return parse_params("step 'x'", LISTS, {"reference": "a", **raw}, kind="setting")


@pytest.mark.parametrize(("raw", "expected"), [
    ({"shrink": "4x2x1"}, (4, 2, 1)), ({"shrink": "4,2,1"}, (4, 2, 1)), ({"shrink": [4, 2, 1]}, (4, 2, 1)),
    ({"shrink": "[4, 2, 1]"}, (4, 2, 1)), ({"shrink": 4, "sigmas": 0, "features": 8}, (4,)),
    ({"shrink": [4.0, 2.0, 1.0]}, (4, 2, 1)),
])
def test_lists_are_read_from_text_yaml_lists_and_single_numbers(raw: dict, expected: tuple) -> None:
    assert resolve(**raw)["shrink"] == expected
    assert resolve(**raw)["sigmas"] == tuple(float(v) for v in LISTS["sigmas"].parse(raw.get("sigmas", "2x1x0"), "x"))


@pytest.mark.parametrize(("raw", "message"), [
    ({"shrink": "4,x"}, "setting 'shrink' must be 1 or more integers >= 1"),
    ({"shrink": "4x0x1"}, "setting 'shrink' must be 1 or more integers >= 1"),
    ({"shrink": [4, 2.5]}, "setting 'shrink'"),
    ({"shrink": []}, "setting 'shrink'"),
    ({"shrink": True}, "setting 'shrink'"),
    ({"pair": [1, 2, 3]}, "setting 'pair' must be 2 numbers >= 0 <= 100"),
    ({"pair": [1, 101]}, "setting 'pair'"),
    ({"sigmas": "1x0"}, "setting 'sigmas' has 2 values but 'shrink' has 3; give 3"),
    ({"iterations": "10x20"}, "setting 'iterations' has 2 values but 'shrink' has 3; give 1 or 3"),
    ({"features": "8x8"}, "setting 'features' has 2 values but 'shrink' has 3; give at least 3"),
    ({"window": 8}, "setting 'window' must be odd, got 8"),
    ({"window": "10"}, "setting 'window' must be odd, got 10"),
    ({"patch": 15}, "setting 'patch' must be even, got 15"),
    ({"odd_list": "3x4"}, "setting 'odd_list' must be odd integers"),
    ({"index": -1}, "setting 'index' must be an integer >= 0 or one of middle or a number >= 0 <= 1, got -1"),
    ({"index": 1.5}, "setting 'index'"),
    ({"index": "first"}, "setting 'index'"),
    ({"colour": 1}, "unknown setting 'colour'; allowed: shrink, sigmas"),
])
def test_each_constraint_refuses_with_one_line_naming_the_setting(raw: dict, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        resolve(**raw)


def test_lengths_parity_alternatives_and_required_accept_what_they_allow() -> None:
    values = resolve(sigmas=[1, 0.5, 0], iterations=50, features="8x8x8x8", pair=[1, 99], window=7, patch=16)
    assert values["sigmas"] == (1.0, 0.5, 0.0) and values["iterations"] == (50,) and len(values["features"]) == 4
    assert values["pair"] == (1.0, 99.0) and (values["window"], values["patch"]) == (7, 16)
    assert resolve(iterations="5x4x3")["iterations"] == (5, 4, 3)
    assert resolve(pair=None)["pair"] is None
    # an int is the first alternative's (an index), a float the third's (a fraction), text the second's
    assert [resolve(index=v)["index"] for v in (1, 1.0, "middle", 0)] == [1, 1.0, "middle", 0]
    assert isinstance(resolve(index=1.0)["index"], float) and isinstance(resolve(index=1)["index"], int)
    with pytest.raises(InputError, match="step 'x': 'reference' is a required property"):
        parse_params("step 'x'", LISTS, {}, kind="setting")


def test_a_choice_named_none_is_a_choice_not_a_missing_value() -> None:
    mask = Param("mask", str, "none", "", choices=("none", "foreground"))
    assert mask.parse("none", "x") == "none"
    with pytest.raises(InputError, match="parameter 'iterations'"):
        Param("iterations", int, 1, "").parse("none", "x")


def test_value_text_writes_lists_as_levels() -> None:
    from registration_core.core.params import value_text

    assert [value_text(v) for v in ((4, 2, 1), [2.0, 0.5], True, None, 1e-05)] == ["4x2x1", "2.0x0.5", "true", "none", "1e-05"]
    assert LISTS["sigmas"].parse(value_text((2.0, 0.5, 0.0)), "x") == (2.0, 0.5, 0.0)
