"""Typed, range-checked method parameters: the schema every method declares and the parser the CLI,
the config validation and the grid expansion share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from registration_core.errors import InputError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class Param:
    """One parameter of a method.

    ``type`` is one of ``int``, ``float``, ``str``, ``bool``. ``choices`` restricts values;
    ``minimum``/``maximum`` bound numbers (``exclusive_minimum`` makes the lower bound strict).
    ``nullable`` lets the value be ``None`` (written ``none`` on the command line).
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

    def allowed(self) -> str:
        """Human-readable description of the allowed values."""
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        text = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[self.type]
        if self.minimum is not None:
            text += f" {'>' if self.exclusive_minimum else '>='} {self.minimum:g}"
        if self.maximum is not None:
            text += f" <= {self.maximum:g}"
        return text + (" or none" if self.nullable else "")

    def parse(self, raw: Any, owner: str) -> Any:
        """Convert ``raw`` (a string from the CLI or a YAML value) and check it; InputError names ``owner``."""
        where = f"{owner}: parameter '{self.name}'"
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in {"none", "null"}):
            if self.nullable:
                return None
            raise InputError(f"{where} must be {self.allowed()}, got none")
        value = self._convert(raw, where)
        if self.choices is not None and value not in self.choices:
            raise InputError(f"{where} must be {self.allowed()}, got {raw!r}")
        if self.type in (int, float):
            too_low = self.minimum is not None and (
                value <= self.minimum if self.exclusive_minimum else value < self.minimum
            )
            too_high = self.maximum is not None and value > self.maximum
            if too_low or too_high:
                raise InputError(f"{where} must be {self.allowed()}, got {raw!r}")
        return value

    def _convert(self, raw: Any, where: str) -> Any:
        bad = InputError(f"{where} must be {self.allowed()}, got {raw!r}")
        if self.type is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise bad
        if isinstance(raw, bool):
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


def parse_params(
    owner: str,
    schema: Mapping[str, Param],
    raw: Mapping[str, Any],
    presets: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Resolve a full parameter dict: defaults, then the chosen preset, then explicit values.

    ``raw`` maps names to strings or YAML values. A ``preset`` entry (when the schema has one)
    selects values from ``presets`` before explicit ones override them. Unknown names and bad
    values raise :class:`InputError` naming ``owner`` and the parameter.
    """
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        raise InputError(
            f"{owner}: unknown parameter '{unknown[0]}' (allowed: {', '.join(sorted(schema))})"
        )
    values = {name: p.default for name, p in schema.items()}
    if "preset" in schema and presets is not None:
        preset = schema["preset"].parse(raw.get("preset", values["preset"]), owner)
        values.update({name: schema[name].parse(v, owner) for name, v in presets[preset].items()})
        values["preset"] = preset
    for name, value in raw.items():
        values[name] = schema[name].parse(value, owner)
    return values


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
