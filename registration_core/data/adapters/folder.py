"""The ``folder`` adapter: NIfTI / ITK files (or pictures) per subject from ``{subject}`` path
patterns inside a dataset folder; landmarks as CSV or elastix point files (read by
:func:`registration_core.core.io.load_landmarks` directly)."""

from __future__ import annotations

from pathlib import Path

from registration_core.core.params import Param
from registration_core.data.adapters.base import Adapter, AdapterConfig, Manifest
from registration_core.data.adapters.patterns import PATTERN_KEYS, pattern_files
from registration_core.data.imports import PICTURE_SUFFIXES, RawImport, picture_shape

PARAMS = (
    Param("path", str, None, "The dataset folder.", required=True),
    Param("image", str, None, "Image path inside the folder, with {subject} (e.g. {subject}/t1w.nii.gz); "
          "subject ids are read from the files it matches. A picture (.jpg, .png, ...) becomes a 2D image "
          "(green channel, 1 mm pixels).", required=True),
    Param("labels", str, None, "Label map path pattern ({subject} optional: without it one file for all "
          "subjects).", nullable=True),
    Param("landmarks", str, None, "Landmark file path pattern: CSV (i,j[,k] voxel or x,y[,z] RAS mm) or an "
          "elastix point file.", nullable=True),
    Param("mask", str, None, "Mask path pattern.", nullable=True),
    Param("subjects", list, None, "Subject ids to use, in this order (null: every subject the image pattern "
          "matches, sorted).", nullable=True, item=str),
    Param("pairs", list, None, "[fixed, moving] subject pairs the dataset defines.", nullable=True, item=list),
)


def folder_manifest(spec: AdapterConfig) -> Manifest:
    """``folder`` adapter: ``path``, patterns ``image`` ``labels`` ``landmarks`` ``mask``, ``subjects``, ``pairs``."""
    root = spec.folder()
    if not isinstance(spec.get("image"), str):
        raise spec.error("image", "is required: the image path inside the folder, with {subject}")
    patterns = {key: spec.get(key) for key in PATTERN_KEYS}
    subjects, files = pattern_files(spec, root, patterns, spec.get("subjects"))
    # pictures (fundus photographs, ...) are imported as 2D images: green channel, 1 mm pixels
    raw_imports = {
        subject: RawImport(files[subject].image, picture_shape(Path(files[subject].image)), (1.0, 1.0), "u1")
        for subject in subjects
        if Path(files[subject].image).suffix.lower() in PICTURE_SUFFIXES
    }
    return Manifest(tuple(subjects), files, spec.pairs(subjects), raw_imports)


ADAPTER = Adapter("folder", PARAMS, folder_manifest, "Files per subject from {subject} path patterns inside a folder.")
