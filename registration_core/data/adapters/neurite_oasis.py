"""The ``neurite-oasis`` adapter: the OASIS-1 release prepared for the VoxelMorph tutorials
(Hoopes, Dalca et al.), one folder ``OASIS_OAS1_xxxx_MR1/`` per subject holding aligned 3D volumes
(aligned_norm / aligned_seg35) and one 2D slice each (slice_norm / slice_seg24); subject ``OAS1_xxxx``."""

from __future__ import annotations

import re

from registration_core.core.params import Param
from registration_core.data.adapters.base import Adapter, AdapterConfig, Manifest
from registration_core.data.adapters.patterns import SUBJECT_FIELD, pattern_files

OASIS_FOLDER = "OASIS_{subject}_MR1"
OASIS_VARIANTS: dict[str, tuple[str, str]] = {
    "3d": ("aligned_norm.nii.gz", "aligned_seg35.nii.gz"),
    "2d": ("slice_norm.nii.gz", "slice_seg24.nii.gz"),
}
PARAMS = (
    Param("path", str, None, "The folder holding the OASIS_OAS1_xxxx_MR1/ folders.", required=True),
    Param("variant", str, "3d", "3d (aligned_norm + aligned_seg35) or 2d (slice_norm + slice_seg24).",
          choices=tuple(OASIS_VARIANTS)),
    Param("subjects", list, None, "Subjects to use (OAS1_0001 or the folder name; null: all, sorted).",
          nullable=True, item=str),
    Param("limit", int, None, "Use only the first `limit` subjects (null: all).", minimum=1, nullable=True),
)


def _oasis_subject_id(name: str) -> str:
    """``OASIS_OAS1_0001_MR1`` -> ``OAS1_0001``; an id already in that form is kept."""
    match = re.fullmatch(OASIS_FOLDER.replace(SUBJECT_FIELD, "(?P<id>.+)"), name)
    return match.group("id") if match else name


def neurite_oasis_manifest(spec: AdapterConfig) -> Manifest:
    """``neurite-oasis`` adapter: ``path``, ``variant`` (3d|2d), ``subjects``, ``limit``."""
    root = spec.folder()
    image, labels = OASIS_VARIANTS[spec.choice("variant")]
    patterns = {"image": f"{OASIS_FOLDER}/{image}", "labels": f"{OASIS_FOLDER}/{labels}"}
    listed = spec.items("subjects")
    listed = None if listed is None else [_oasis_subject_id(name) for name in listed]
    subjects, files = pattern_files(spec, root, patterns, listed, spec.limit())
    return Manifest(tuple(subjects), files)


ADAPTER = Adapter("neurite-oasis", PARAMS, neurite_oasis_manifest, "OASIS-1 as prepared for the VoxelMorph tutorials.")
