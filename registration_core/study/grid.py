"""Hyperparameter grids: the grid points of a method (fixed params x the product of its grid
values), their ids (``key~value__key~value``, or ``default``) and the text of values in paths,
tables and command lines."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from registration_core.core.params import value_text
from registration_core.errors import InputError
from registration_core.methods import available_methods, get_method

VALUE_PATTERN = r"[A-Za-z0-9.+-]+"
"""Formatted grid values (see :func:`format_value`)."""
GRID_ID_PATTERN = rf"default|[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*~{VALUE_PATTERN}(?:__[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*~{VALUE_PATTERN})*"
"""Grid ids: ``default`` or ``key~value`` items joined by ``__``."""
DEFAULT_GRID_ID = "default"


def format_value(value: Any) -> str:
    """:func:`value_text` of a grid value, which becomes part of a path: InputError for a
    non-finite number or text outside ``[A-Za-z0-9.+-]``."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"grid value {value!r} is not a finite number")
    text = value_text(value)
    if not re.fullmatch(VALUE_PATTERN, text):
        raise InputError(f"grid value {value!r} may only use letters, digits and . + -")
    return text


def grid_id(values: Mapping[str, Any]) -> str:
    """``key~value__key~value`` in the mapping's order, or ``default`` when empty."""
    if not values:
        return DEFAULT_GRID_ID
    return "__".join(f"{key}~{format_value(value)}" for key, value in values.items())


@dataclass(frozen=True)
class GridPoint:
    """One point of a method's grid.

    ``values``: grid key -> raw value (config order). ``params``: the method's fixed params merged
    with ``values`` (what the register command receives). ``resolved``: every parameter of the
    method after defaults, preset and ``params`` (what the jobs table reports for factors).
    """

    method: str
    grid_id: str
    values: dict[str, Any]
    params: dict[str, Any]
    resolved: dict[str, Any]


def _check_keys(method: str, section: str, keys: Sequence[str], allowed: Mapping[str, Any]) -> None:
    for key in keys:
        if key not in allowed:
            raise InputError(
                f"config key methods.{method}.{section}.{key}: unknown parameter of method {method} "
                f"(allowed: {', '.join(sorted(allowed))})"
            )


def _resolve(method: str, where: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return get_method(method).resolve_params(raw)
    except InputError as exc:
        raise InputError(f"config key {where}: {exc}") from None


def method_grid(method: str, spec: Mapping[str, Any], extra_params: Mapping[str, Any] | None = None) -> list[GridPoint]:
    """Grid points of one method config ``{params, grid}``, validated through the method's schema.

    ``extra_params`` (e.g. ``device``) are added to ``params`` unless the config sets them.
    Errors name ``methods.<method>.params.<key>`` or ``methods.<method>.grid.<key>``.
    """
    if method not in available_methods():
        raise InputError(f"config key methods.{method}: unknown method (available: {', '.join(available_methods())})")
    schema = get_method(method).params
    params = dict(spec.get("params", {}))
    grid = dict(spec.get("grid", {}))
    _check_keys(method, "params", list(params), schema)
    _check_keys(method, "grid", list(grid), schema)
    for key in grid:
        if key in params:
            raise InputError(f"config key methods.{method}.grid.{key}: also set in methods.{method}.params; set it in one place")
    _resolve(method, f"methods.{method}.params", params)
    for key, values in grid.items():
        ids = set()
        for value in values:
            _resolve(method, f"methods.{method}.grid.{key}", {**params, key: value})
            try:
                ids.add(format_value(value))
            except InputError as exc:
                raise InputError(f"config key methods.{method}.grid.{key}: {exc}") from None
        if len(ids) != len(values):
            raise InputError(f"config key methods.{method}.grid.{key}: values repeat once written as text")
    for key, value in (extra_params or {}).items():
        if key in schema and key not in params and key not in grid:
            params[key] = value
    points = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        gid = grid_id(values)
        merged = {**params, **values}
        resolved = _resolve(method, f"methods.{method}.grid (point {gid})", merged)
        points.append(GridPoint(method, gid, values, merged, resolved))
    return points



def parse_grid_id(grid_id_: str) -> dict[str, str]:
    """``key~value__key~value`` -> ``{key: value}`` (value texts); ``{}`` for ``default``."""
    if grid_id_ == DEFAULT_GRID_ID:
        return {}
    return dict(item.split("~", 1) for item in grid_id_.split("__"))


def grid_id_without(grid_id_: str, keys: Sequence[str]) -> str:
    """``grid_id_`` without the items of ``keys`` (``default`` when none is left)."""
    kept = {key: value for key, value in parse_grid_id(grid_id_).items() if key not in keys}
    return "__".join(f"{key}~{value}" for key, value in kept.items()) or DEFAULT_GRID_ID
