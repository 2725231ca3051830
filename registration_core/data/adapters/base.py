"""The adapter contract: what an adapter declares (:class:`Adapter`), how it reads its config keys
(:class:`AdapterConfig`) and what it returns (:class:`Manifest` of :class:`SubjectFiles`).

An adapter turns a dataset's config mapping (``datasets.<name>`` minus the study's own keys
``adapter``, ``preprocess``, ``align``, ``make_mask``) into a manifest. Its keys are declared as
:class:`registration_core.core.params.Param` (name, type, default, help, choices, bounds,
``required``); the config schema documents exactly these (tests/test_adapter_registry.py), and
:class:`AdapterConfig` reads only declared keys, with the declared defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registration_core.core.params import Param
from registration_core.data.imports import LandmarkImport, RawImport
from registration_core.errors import InputError


@dataclass(frozen=True)
class SubjectFiles:
    """A subject's input files (paths as str; relative to the working dir when the config path is).

    ``landmarks`` is a CSV (``i,j[,k]`` voxel or ``x,y[,z]`` RAS mm) or an elastix point file as
    :func:`registration_core.core.io.load_landmarks` reads it, or a dataset's own point file listed in
    :attr:`Manifest.landmark_imports`. For a subject in :attr:`Manifest.raw_imports`, ``image``
    is the raw file: convert it with :func:`registration_core.data.imports.import_raw` first.
    """

    image: str
    labels: str | None = None
    landmarks: str | None = None
    mask: str | None = None


@dataclass(frozen=True)
class Manifest:
    """The subjects of a dataset and their files, as an adapter found them.

    Attributes:
        subjects: subject ids in dataset order.
        files: subject -> :class:`SubjectFiles`.
        pairs: (fixed, moving) pairs the dataset defines (Learn2Reg pairs, DIR-Lab inhale/exhale,
            FIRE image pairs, or the folder adapter's ``pairs`` key); None when it defines none.
        raw_imports: subject -> raw image to convert to NIfTI first.
        landmark_imports: subject -> point file to convert to a landmark CSV (on the imported image).
    """

    subjects: tuple[str, ...]
    files: dict[str, SubjectFiles]
    pairs: tuple[tuple[str, str], ...] | None = None
    raw_imports: dict[str, RawImport] = field(default_factory=dict)
    landmark_imports: dict[str, LandmarkImport] = field(default_factory=dict)


@dataclass(frozen=True)
class Adapter:
    """One dataset adapter: its ``adapter:`` name, its config keys and its manifest builder.

    ``build`` is None for the adapters whose subjects the study makes itself (``demo``: generated;
    ``truth``: deformed from another dataset's subject, :mod:`registration_core.study.plan`); their
    keys are validated by the config schema. ``help`` is one sentence on the dataset layout.
    """

    name: str
    params: tuple[Param, ...]
    build: Callable[[AdapterConfig], Manifest] | None
    help: str

    @property
    def keys(self) -> tuple[str, ...]:
        """The declared config key names, in declaration order."""
        return tuple(param.name for param in self.params)


class AdapterConfig:
    """A dataset's config mapping read through its adapter's declared keys.

    Every getter takes a declared key (reading an undeclared one is a programming error,
    ``KeyError``) and falls back to the declared default when the key is absent or null. Errors
    are InputErrors starting ``config key <where>.<key>:``; ``base_dir`` is the folder relative
    ``path`` values are relative to.
    """

    def __init__(self, adapter: Adapter, spec: Mapping[str, Any], base_dir: Path, where: str) -> None:
        self.params = {param.name: param for param in adapter.params}
        self.spec, self.base_dir, self.where = spec, Path(base_dir), where

    def error(self, key: str, message: str) -> InputError:
        """An InputError about ``key``."""
        return InputError(f"config key {self.where}.{key}: {message}")

    def param(self, key: str) -> Param:
        """The declaration of ``key``."""
        if key not in self.params:
            raise KeyError(f"{key!r} is not a declared key of this adapter ({', '.join(self.params)})")
        return self.params[key]

    def get(self, key: str) -> Any:
        """The raw value (the declared default when absent or null; a list default as a list)."""
        default = self.param(key).default
        value = self.spec.get(key)
        if value is not None:
            return value
        return list(default) if isinstance(default, tuple) else default

    def folder(self, key: str = "path") -> Path:
        """A required existing folder; a relative path is taken relative to ``base_dir``."""
        self.param(key)
        value = self.spec.get(key)
        if not isinstance(value, str) or not value:
            raise self.error(key, f"{value!r} is not allowed; expected the dataset folder (a path)")
        path = Path(value) if Path(value).is_absolute() else self.base_dir / value
        if not path.is_dir():
            raise self.error(key, f"folder {path} not found")
        return path

    def choice(self, key: str, allowed: Sequence[str] | None = None) -> str | None:
        """One of ``allowed`` (default: the declared choices), or the declared default when absent."""
        allowed = self.param(key).choices if allowed is None else allowed
        value = self.get(key)
        if value is not None and value not in allowed:
            raise self.error(key, f"{value!r} is not allowed; allowed: {', '.join(allowed)}")
        return value

    def number(self, key: str) -> float:
        """A real number (``> 0`` when declared with an exclusive minimum of 0)."""
        param = self.param(key)
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(key, f"{value!r} is not allowed; expected a number")
        if param.minimum == 0 and param.exclusive_minimum and value <= 0:
            raise self.error(key, f"{value!r} is not allowed; expected a number > 0")
        return float(value)

    def flag(self, key: str) -> bool:
        """A boolean."""
        value = self.get(key)
        if not isinstance(value, bool):
            raise self.error(key, f"{value!r} is not allowed; expected true or false")
        return value

    def limit(self, key: str = "limit") -> int | None:
        """None or an integer >= 1."""
        value = self.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise self.error(key, f"{value!r} is not allowed; expected an integer >= 1 or null")
        return value

    def items(self, key: str) -> list[Any] | None:
        """The declared default, or a non-empty list of distinct values of the declared ``item`` type."""
        item_type: type = self.param(key).item or object
        value = self.spec.get(key)
        if value is None:
            return self.get(key)
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
            raise self.error(key, f"{value!r} is not allowed; expected a non-empty list or null")
        for item in value:
            if isinstance(item, bool) or not isinstance(item, item_type):
                raise self.error(key, f"item {item!r} is not allowed; expected {item_type.__name__} items")
        duplicates = sorted({str(item) for item in value if list(value).count(item) > 1})
        if duplicates:
            raise self.error(key, f"{duplicates[0]} is listed more than once")
        return list(value)

    def pairs(self, subjects: Sequence[str], key: str = "pairs") -> tuple[tuple[str, str], ...] | None:
        """None or a list of ``[fixed, moving]`` subject pairs (distinct subjects of ``subjects``)."""
        value = self.get(key)
        if value is None:
            return None
        if isinstance(value, str) or not isinstance(value, Sequence) or not value:
            raise self.error(key, f"{value!r} is not allowed; expected a non-empty list of [fixed, moving]")
        known = set(subjects)
        pairs = []
        for index, pair in enumerate(value):
            if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2 or pair[0] == pair[1]:
                raise self.error(f"{key}[{index}]", f"{pair!r} is not allowed; expected [fixed, moving], two subjects")
            for subject in pair:
                if subject not in known:
                    raise self.error(f"{key}[{index}]", f"subject {subject!r} is not in the dataset")
            pairs.append((pair[0], pair[1]))
        return tuple(pairs)

    def wrap(self, call: Callable[[], Any]) -> Any:
        """Run ``call``, prefixing an InputError's message with ``config key <where>``."""
        try:
            return call()
        except InputError as exc:
            raise InputError(f"config key {self.where}: {exc}") from None
