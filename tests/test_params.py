"""Parameter parsing: types, ranges, presets and one-line errors naming the parameter."""

from __future__ import annotations

import pytest

from registration_core.errors import InputError
from registration_core.methods import available_methods, get_method
from registration_core.core.params import Param, parse_assignments, parse_params

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
