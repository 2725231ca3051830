"""Dataset adapters: the registry of the ``adapter:`` values of a dataset and :func:`build_manifest`.

Each adapter is one module declaring ``ADAPTER`` (:class:`Adapter`: name, config keys as
:class:`registration_core.core.params.Param`, manifest builder); :data:`ADAPTERS` lists them. To
add one, write its module and add its ``ADAPTER`` to :data:`ADAPTERS`; the config schema documents
its keys (registration_core/study/config.schema.yaml ``$defs/adapter_keys``, checked against the
declarations by tests/test_adapter_registry.py).

* ``folder``: NIfTI / ITK files per subject from ``{subject}`` patterns; landmarks as CSV or
  elastix point files (read by :func:`registration_core.core.io.load_landmarks` directly).
* ``neurite-oasis``: ``OASIS_OAS1_xxxx_MR1/`` folders (aligned_norm / aligned_seg35, or the 2D
  slice_norm / slice_seg24); subject ``OAS1_xxxx``.
* ``dirlab``: DIR-Lab 4DCT raw int16 volumes (geometry from
  :data:`registration_core.data.adapters.dirlab.DIRLAB_CASES`) and the 300 extreme-phase
  landmarks; subjects ``case1-T00``; pairs (fixed T00, moving T50).
* ``learn2reg``: a Learn2Reg ``*_dataset.json`` (images, labels, masks, keypoint CSVs, pairs).
* ``fire``: FIRE fundus pairs (RGB JPEG -> green channel, control points); subjects ``A01-1``.
* ``demo`` and ``truth``: keys only; the study makes their subjects
  (:mod:`registration_core.study.plan`) and the config schema validates their keys.

Nothing is written into dataset folders: raw volumes and pictures, and dataset point files, are
listed in the manifest for :mod:`registration_core.data.imports` to convert.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from registration_core.data.adapters import demo, dirlab, fire, folder, learn2reg, neurite_oasis, truth
from registration_core.data.adapters.base import Adapter, AdapterConfig, Manifest, SubjectFiles
from registration_core.errors import InputError

__all__ = [
    "ADAPTERS", "ADAPTER_KEYS", "MANIFEST_ADAPTERS", "Adapter", "AdapterConfig", "Manifest", "SubjectFiles",
    "build_manifest",
]

ADAPTERS: dict[str, Adapter] = {
    adapter.name: adapter
    for adapter in (
        folder.ADAPTER, neurite_oasis.ADAPTER, dirlab.ADAPTER, learn2reg.ADAPTER, fire.ADAPTER, demo.ADAPTER,
        truth.ADAPTER,
    )
}
"""Every adapter by name, in the order the config schema's ``adapter`` enum lists them."""

MANIFEST_ADAPTERS: tuple[str, ...] = tuple(name for name, adapter in ADAPTERS.items() if adapter.build is not None)
"""The adapters :func:`build_manifest` reads (the others' subjects are made by the study)."""

ADAPTER_KEYS: dict[str, tuple[str, ...]] = {name: adapter.keys for name, adapter in ADAPTERS.items()}
"""The config keys each adapter reads (besides ``adapter`` and the study's own dataset keys)."""


def build_manifest(adapter: str, spec: Mapping[str, Any], base_dir: Path, where: str) -> Manifest:
    """The manifest of a dataset from its config mapping.

    Args:
        adapter: one of :data:`MANIFEST_ADAPTERS`.
        spec: the dataset's config mapping; the keys each adapter reads are :data:`ADAPTER_KEYS`
            (other keys are left to the caller).
        base_dir: folder that relative ``path`` values are relative to.
        where: the config location for messages, e.g. ``"datasets.lung"``.

    Nothing is written: raw images and dataset-specific point files are listed in
    ``raw_imports`` / ``landmark_imports`` for the workflow to convert
    (:func:`registration_core.data.imports.import_raw`, :func:`~registration_core.data.imports.import_landmarks`).

    Raises:
        InputError: a message starting ``config key <where>.<key>:`` (or naming the file) for a
        bad value, a missing folder or file, or a dataset without subjects.
    """
    if adapter not in MANIFEST_ADAPTERS:
        raise InputError(
            f"config key {where}.adapter: {adapter!r} is not allowed; allowed: {', '.join(MANIFEST_ADAPTERS)}"
        )
    declared = ADAPTERS[adapter]
    return declared.build(AdapterConfig(declared, spec, base_dir, where))
