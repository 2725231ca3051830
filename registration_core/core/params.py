"""Typed, range-checked parameters: the declarations every plug-in (method, preprocessing step,
alignment) makes of its settings, the parser the CLI, the config validation and the grid
expansion share, and the JSON-schema fragment of a declaration (for the config schema).

A declaration states every constraint of a value: its type (``int``, ``float``, ``str``, ``bool``,
``list`` of ints or floats, or ``object`` for a choice between alternative declarations), choices,
bounds, parity, the number of list items and the length of a list relative to another parameter.
Bad values raise one-line :class:`InputError` naming the owner and the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, Mapping

from registration_core.errors import InputError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_SCALAR_TEXT = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
_ITEMS_TEXT = {int: "integers", float: "numbers"}
_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", list: "array"}

LengthRule = Literal["equal", "equal_or_one", "at_least"]


@dataclass(frozen=True)
class Param:
    """One parameter (method) or setting (preprocessing step, alignment).

    ``type`` is ``int``, ``float``, ``str``, ``bool``, ``list`` or ``object``:

    * ``choices`` restricts values; ``minimum``/``maximum`` bound numbers (``exclusive_minimum``
      makes the lower bound strict); ``parity`` ("odd"/"even") restricts integers; ``nullable``
      lets the value be ``None`` (written ``none`` on the command line).
    * ``list``: a tuple of ``item`` values (``int`` or ``float``), each checked against the bounds
      and parity above; written ``4x2x1``, ``4,2,1``, ``[4, 2, 1]`` or one number (one item).
      It holds ``min_items`` to ``max_items`` (None: no upper limit) items; with ``length_of``
      its length is compared to parameter ``length_of``'s: ``equal``, ``equal_or_one`` (one item
      stands for all) or ``at_least``.
    * ``object``: the first of ``alternatives`` (declarations without names) that accepts the
      value; YAML values must have the alternative's type (``1`` is an int, ``1.0`` a float).

    ``required`` settings have no default (``default`` is then None and not used).
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    nullable: bool = False
    parity: Literal["odd", "even"] | None = None
    item: type | None = None
    min_items: int = 1
    max_items: int | None = None
    length_of: str | None = None
    length_rule: LengthRule = "equal"
    alternatives: tuple[Param, ...] = ()
    required: bool = False

    def allowed(self) -> str:
        """Human-readable description of the allowed values."""
        if self.type is object:
            text = " or ".join(alternative.allowed() for alternative in self.alternatives)
        elif self.choices is not None:
            text = "one of " + ", ".join(str(c) for c in self.choices)
        elif self.type is list:
            count = (f"{self.min_items} or more" if self.max_items is None else str(self.min_items)
                     if self.max_items == self.min_items else f"{self.min_items} to {self.max_items}")
            text = f"{count} {_ITEMS_TEXT[self.item]}{self._bounds_text()} (a list or text such as 4x2x1)"
        else:
            text = _SCALAR_TEXT[self.type] + self._bounds_text()
        if self.length_of is not None:
            text += {"equal": f", as many as '{self.length_of}'", "equal_or_one": f", 1 or as many as '{self.length_of}'",
                     "at_least": f", at least as many as '{self.length_of}'"}[self.length_rule]
        return text + (" or none" if self.nullable else "")

    def _bounds_text(self) -> str:
        text = f" ({self.parity})" if self.parity else ""
        if self.minimum is not None:
            text += f" {'>' if self.exclusive_minimum else '>='} {self.minimum:g}"
        if self.maximum is not None:
            text += f" <= {self.maximum:g}"
        return text

    def parse(self, raw: Any, owner: str, kind: str = "parameter") -> Any:
        """Convert ``raw`` (a string from the CLI or a YAML value) and check it; InputError names
        ``owner`` and the ``kind`` ("parameter" or "setting") of this declaration."""
        return self._parse(raw, f"{owner}: {kind} '{self.name}'")

    def _parse(self, raw: Any, where: str) -> Any:
        if raw is None or (self.nullable and isinstance(raw, str) and raw.strip().lower() in {"none", "null"}):
            if self.nullable:
                return None
            raise InputError(f"{where} must be {self.allowed()}, got none")
        if self.type is object:
            return self._parse_alternatives(raw, where)
        if self.type is list:
            return self._parse_list(raw, where)
        value = self._convert(raw, where)
        if (self.choices is not None and value not in self.choices) or not self._in_bounds(value):
            raise InputError(f"{where} must be {self.allowed()}, got {raw!r}")
        if self.parity is not None and value % 2 != (1 if self.parity == "odd" else 0):
            raise InputError(f"{where} must be {self.parity}, got {value}")
        return value

    def _in_bounds(self, value: Any) -> bool:
        if self.type not in (int, float) or isinstance(value, bool):
            return True
        too_low = self.minimum is not None and (value <= self.minimum if self.exclusive_minimum else value < self.minimum)
        return not too_low and not (self.maximum is not None and value > self.maximum)

    def _parse_list(self, raw: Any, where: str) -> tuple[Any, ...]:
        bad = InputError(f"{where} must be {self.allowed()}, got {raw!r}")
        if isinstance(raw, str):
            items: list[Any] = raw.strip().strip("[]()").replace("x", ",").split(",")
            if any(not item.strip() for item in items):
                raise bad
        elif isinstance(raw, (list, tuple)):
            items = list(raw)
        elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
            items = [raw]
        else:
            raise bad
        if len(items) < self.min_items or (self.max_items is not None and len(items) > self.max_items):
            raise bad
        single = replace(self, type=self.item, item=None, nullable=False, length_of=None, parity=None)
        values = []
        for item in items:
            if item is None or isinstance(item, (list, tuple, dict)):
                raise bad
            try:
                values.append(single._parse(item, where))
            except InputError:
                raise bad from None
        if self.parity is not None and any(v % 2 != (1 if self.parity == "odd" else 0) for v in values):
            raise InputError(f"{where} must be {self.parity} {_ITEMS_TEXT[self.item]}, got {raw!r}")
        return tuple(values)

    def _parse_alternatives(self, raw: Any, where: str) -> Any:
        for alternative in self.alternatives:
            if isinstance(raw, str) or _has_type(raw, alternative.type):
                try:
                    return alternative._parse(raw, where)
                except InputError:
                    continue
        raise InputError(f"{where} must be {self.allowed()}, got {raw!r}")

    def _convert(self, raw: Any, where: str) -> Any:
        bad = InputError(f"{where} must be {self.allowed()}, got {raw!r}")
        if self.type is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise bad
        if isinstance(raw, bool) or isinstance(raw, (list, tuple, dict)):
            raise bad
        if self.type is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise bad
            try:
                return int(raw) if not isinstance(raw, str) else int(raw.strip())
            except ValueError:
                raise bad from None
        if self.type is float:
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise bad from None
            if value != value or value in (float("inf"), float("-inf")):
                raise bad
            return value
        return str(raw)


def _has_type(raw: Any, kind: type) -> bool:
    """Whether a YAML value has the Python type of ``kind`` (an int is also a float, never a bool)."""
    if isinstance(raw, bool):
        return kind is bool
    if kind is int:
        return isinstance(raw, int)
    if kind is float:
        return isinstance(raw, (int, float))
    if kind is list:
        return isinstance(raw, (list, tuple))
    return isinstance(raw, kind)


def parse_params(
    owner: str,
    schema: Mapping[str, Param],
    raw: Mapping[str, Any],
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    kind: str = "parameter",
) -> dict[str, Any]:
    """Resolve a full parameter dict: defaults, then the chosen preset, then explicit values.

    ``raw`` maps names to strings or YAML values. A ``preset`` entry (when the schema has one)
    selects values from ``presets`` before explicit ones override them. Unknown names, missing
    required ones, bad values and list lengths that break a ``length_of`` rule raise
    :class:`InputError` naming ``owner`` and the ``kind`` ("parameter", "setting") of the name.
    """
    unknown = [name for name in raw if name not in schema]
    if unknown:
        raise InputError(f"{owner}: unknown {kind} '{unknown[0]}'; allowed: {', '.join(schema)}")
    for name, p in schema.items():
        if p.required and name not in raw:
            raise InputError(f"{owner}: '{name}' is a required property ({kind}: {p.allowed()})")
    values = {name: p.default for name, p in schema.items()}
    if "preset" in schema and presets is not None:
        preset = schema["preset"].parse(raw.get("preset", values["preset"]), owner, kind)
        values.update({name: schema[name].parse(v, owner, kind) for name, v in presets[preset].items()})
        values["preset"] = preset
    for name, value in raw.items():
        values[name] = schema[name].parse(value, owner, kind)
    for p in schema.values():
        if p.length_of is not None:
            _check_length(owner, kind, p, values[p.name], values[p.length_of])
    return values


def _check_length(owner: str, kind: str, p: Param, value: Any, other: Any) -> None:
    """InputError when list ``value`` of ``p`` breaks its ``length_rule`` against list ``other``."""
    if value is None or other is None:
        return
    n, m = len(value), len(other)
    ok = {"equal": n == m, "equal_or_one": n in (1, m), "at_least": n >= m}[p.length_rule]
    if not ok:
        give = {"equal": f"{m}", "equal_or_one": f"1 or {m}", "at_least": f"at least {m}"}[p.length_rule]
        raise InputError(f"{owner}: {kind} '{p.name}' has {n} values but '{p.length_of}' has {m}; give {give}")


def value_text(value: Any) -> str:
    """Text of a value on the command line and in tables: ``true``/``false``, ``none``, numbers in
    Python's shortest round-trip text (``0.005``, ``1e-05``), lists as ``4x2x1``, strings kept."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return "x".join(value_text(v) for v in value)
    return str(value)


def json_schema(p: Param) -> dict[str, Any]:
    """The JSON-schema fragment of one declaration (YAML view: types, bounds, choices, default, help)."""
    schema: dict[str, Any] = {"description": p.help} if p.help else {}
    schema.update(_value_schema(p))
    if p.nullable:
        value = {k: v for k, v in schema.items() if k in _VALUE_KEYS}
        alternatives = value["anyOf"] if list(value) == ["anyOf"] else [value]
        schema = {**{k: v for k, v in schema.items() if k not in _VALUE_KEYS}, "anyOf": [*alternatives, {"type": "null"}]}
    if p.type is list or any(alternative.type is list for alternative in p.alternatives):
        schema["description"] = f"{schema.get('description', '')} (a list, or text such as 4x2x1)".strip()
    if p.length_of is not None:
        rule = {"equal": "as many items as", "equal_or_one": "1 item or as many as", "at_least": "at least as many items as"}
        schema["description"] = f"{schema.get('description', '')} ({rule[p.length_rule]} {p.length_of})".strip()
    if not p.required:
        schema["default"] = list(p.default) if isinstance(p.default, tuple) else p.default
    return schema


_VALUE_KEYS = frozenset({"type", "enum", "minimum", "exclusiveMinimum", "maximum", "multipleOf", "not", "items",
                         "minItems", "maxItems", "anyOf"})


def _value_schema(p: Param) -> dict[str, Any]:
    """Type, choices, bounds and parity of a declaration (no description or default)."""
    if p.type is object:
        return {"anyOf": [_value_schema(alternative) for alternative in p.alternatives]}
    if p.choices is not None:
        return {"enum": list(p.choices)}
    if p.type is list:
        items = _value_schema(replace(p, type=p.item, item=None))
        schema: dict[str, Any] = {"type": "array", "items": items, "minItems": p.min_items}
        return schema if p.max_items is None else {**schema, "maxItems": p.max_items}
    schema = {"type": _JSON_TYPES[p.type]}
    if p.minimum is not None:
        schema["exclusiveMinimum" if p.exclusive_minimum else "minimum"] = p.minimum
    if p.maximum is not None:
        schema["maximum"] = p.maximum
    if p.parity == "even":
        schema["multipleOf"] = 2
    elif p.parity == "odd":
        schema["not"] = {"multipleOf": 2}
    return schema


def settings_schema(schema: Mapping[str, Param], description: str = "", **extra: Any) -> dict[str, Any]:
    """The JSON schema of an object of settings declared by ``schema`` (no other key allowed)."""
    result: dict[str, Any] = {"description": description} if description else {}
    result.update({"type": "object", **extra, "additionalProperties": False,
                   "properties": {name: json_schema(p) for name, p in schema.items()}})
    required = [name for name, p in schema.items() if p.required]
    return {**result, "required": required} if required else result


def parse_assignments(items: list[str] | None) -> dict[str, str]:
    """Parse CLI ``key=value`` strings into a dict; a malformed item raises InputError naming it."""
    result: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--param '{item}' is not of the form key=value")
        if key.strip() in result:
            raise InputError(f"--param '{key.strip()}' given twice")
        result[key.strip()] = value.strip()
    return result
