"""The ``learn2reg`` adapter: a Learn2Reg (Hering et al.) ``<name>_dataset.json`` next to imagesTr/,
labelsTr/, masksTr/, keypointsTr/; subjects are the image file stems (``NLST_0001_0000``), pairs
the JSON's pair list of the chosen split.

"training" (and "test") list per-image entries {image, label, mask, keypoints} with paths relative
to the JSON's folder ("./imagesTr/NLST_0001_0000.nii.gz"); pair lists hold {fixed, moving} image
paths. Keypoint CSVs become landmark CSVs (format ``learn2reg-csv``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from registration_core.core.io import read_json_object
from registration_core.core.params import Param
from registration_core.data.adapters.base import Adapter, AdapterConfig, Manifest, SubjectFiles
from registration_core.data.imports import LandmarkImport
from registration_core.errors import InputError

LEARN2REG_SPLITS = {"training": "training_paired_images", "validation": "registration_val", "test": "registration_test"}
LEARN2REG_FILE_KEYS = {"label": "labels", "mask": "mask", "keypoints": "landmarks"}
NIFTI_NAME = re.compile(r"(?P<stem>.+?)(?:\.nii\.gz|\.nii|\.mha|\.nrrd)")
PARAMS = (
    Param("path", str, None, "The folder holding the dataset JSON.", required=True),
    Param("json", str, None, "The dataset JSON's file name (null: the one *_dataset.json in `path`).",
          nullable=True),
    Param("split", str, "validation", "Whose pairs: training (training_paired_images; every training image "
          "when it lists none), validation (registration_val) or test (registration_test).",
          choices=tuple(LEARN2REG_SPLITS)),
)


def _learn2reg_json(spec: AdapterConfig, root: Path) -> tuple[Path, dict[str, Any]]:
    """The dataset JSON (key ``json``, or the single ``*_dataset.json`` in ``root``) and its content."""
    name = spec.get("json")
    if name is None:
        candidates = sorted(root.glob("*_dataset.json"))
        if len(candidates) != 1:
            found = ", ".join(p.name for p in candidates) or "none"
            raise spec.error("json", f"name the dataset JSON in {root} (found *_dataset.json: {found})")
        path = candidates[0]
    elif not isinstance(name, str) or not (root / name).is_file():
        raise spec.error("json", f"{name!r}: file not found in {root}")
    else:
        path = root / name
    return path, read_json_object(path, "Learn2Reg dataset JSON")


def _learn2reg_entries(path: Path, content: dict[str, Any], key: str) -> list[dict[str, str]]:
    """The list ``content[key]`` as dicts of str (a bare path string is ``{"image": path}``)."""
    entries = content.get(key, [])
    if not isinstance(entries, list):
        raise InputError(f"{path}: '{key}' is not a list")
    out = []
    for index, entry in enumerate(entries):
        entry = {"image": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
            raise InputError(f"{path}: '{key}'[{index}] is not an object of file paths")
        out.append(entry)
    return out


def _learn2reg_file(json_path: Path, relative: str) -> Path:
    """A path listed in the JSON, resolved against its folder; it must exist."""
    path = json_path.parent / relative
    if not path.is_file():
        raise InputError(f"{json_path}: lists {relative!r} but {path} does not exist")
    return path


def learn2reg_manifest(spec: AdapterConfig) -> Manifest:
    """``learn2reg`` adapter: ``path``, ``json``, ``split`` (training|validation|test)."""
    root = spec.folder()
    json_path, content = _learn2reg_json(spec, root)
    split = spec.choice("split")
    per_image = {
        entry["image"]: entry
        for key in ("training", "test")
        for entry in _learn2reg_entries(json_path, content, key)
        if "image" in entry
    }
    pair_entries = _learn2reg_entries(json_path, content, LEARN2REG_SPLITS[split])
    for index, entry in enumerate(pair_entries):
        if not {"fixed", "moving"} <= set(entry):
            raise InputError(f"{json_path}: '{LEARN2REG_SPLITS[split]}'[{index}] needs 'fixed' and 'moving'")
    if pair_entries:
        images = list(dict.fromkeys(path for entry in pair_entries for path in (entry["fixed"], entry["moving"])))
    elif split == "training":
        images = list(per_image)  # no training pairs listed: every training image, pairs chosen by the study
    else:
        raise spec.error("split", f"{json_path} lists no '{LEARN2REG_SPLITS[split]}' pairs")
    if not images:
        raise InputError(f"{json_path}: lists no images")
    ids: dict[str, str] = {}
    files, landmark_imports = {}, {}
    for relative in images:
        match = NIFTI_NAME.fullmatch(Path(relative).name)
        if match is None:
            raise InputError(f"{json_path}: {relative!r} is not a NIfTI / ITK image path")
        subject = match.group("stem")
        if ids.setdefault(subject, relative) != relative:
            raise InputError(f"{json_path}: {ids[subject]!r} and {relative!r} have the same name {subject!r}")
        entry = per_image.get(relative, {})
        paths = {"image": _learn2reg_file(json_path, relative)}
        paths |= {ours: _learn2reg_file(json_path, entry[theirs]) for theirs, ours in LEARN2REG_FILE_KEYS.items()
                  if theirs in entry}
        files[subject] = SubjectFiles(**{key: str(value) for key, value in paths.items()})
        if "landmarks" in paths:
            landmark_imports[subject] = LandmarkImport(str(paths["landmarks"]), "learn2reg-csv")
    subject_of = {relative: subject for subject, relative in ids.items()}
    pairs = tuple((subject_of[e["fixed"]], subject_of[e["moving"]]) for e in pair_entries) or None
    return Manifest(tuple(ids), files, pairs, {}, landmark_imports)


ADAPTER = Adapter("learn2reg", PARAMS, learn2reg_manifest, "A Learn2Reg dataset JSON: images, labels, masks, keypoints, pairs.")
