"""Subject files from path patterns: ``{subject}`` in a pattern relative to a dataset folder stands
for the subject id (``"{subject}/t1w.nii.gz"``, ``"{subject}/anat/{subject}_T1w.nii.gz"``).

Used by the ``folder`` adapter (patterns from the config) and the ``neurite-oasis`` adapter (fixed
patterns). Patterns are relative POSIX paths without glob characters; nothing is written.
"""

from __future__ import annotations

import re
from pathlib import Path

from registration_core.data.adapters.base import AdapterConfig, SubjectFiles
from registration_core.errors import InputError

PATTERN_KEYS = ("image", "labels", "landmarks", "mask")
SUBJECT_FIELD = "{subject}"


def _check_pattern(key: str, pattern: str, need_subject: bool) -> None:
    """A relative path pattern without glob characters; ``{subject}`` required when ``need_subject``."""
    if not isinstance(pattern, str) or not pattern:
        raise InputError(f"{key} pattern {pattern!r} is not allowed; expected a non-empty relative path string")
    if need_subject and SUBJECT_FIELD not in pattern:
        raise InputError(f"{key} pattern {pattern!r} must contain {SUBJECT_FIELD}")
    if any(c in pattern for c in "*?[]") or Path(pattern).is_absolute():
        raise InputError(f"{key} pattern {pattern!r} must be a relative path without glob characters (*?[])")


def _check_dataset_path(path: Path) -> Path:
    """The dataset folder must exist."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"dataset path {path} does not exist or is not a folder")
    return path


def _check_subject_id(subject: str) -> None:
    """A subject id is a non-empty string without path separators."""
    if not isinstance(subject, str) or not subject or "/" in subject or subject in (".", ".."):
        raise InputError(f"subject id {subject!r} is not allowed; expected a non-empty name without '/'")


def _resolve(path: Path, pattern: str, subject: str) -> Path:
    """``path / pattern`` with every ``{subject}`` replaced by ``subject``."""
    return path / pattern.replace(SUBJECT_FIELD, subject)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Regex matching the pattern's relative POSIX path; group ``subject`` (repeats must agree)."""
    parts = [re.escape(part) for part in pattern.split(SUBJECT_FIELD)]
    regex = parts[0] + "(?P<subject>[^/]+)" + parts[1] + "".join("(?P=subject)" + part for part in parts[2:])
    return re.compile(regex)


def discover_subjects(path: Path, image_pattern: str, subjects: list[str] | None = None) -> list[str]:
    """Subject ids of a folder dataset whose image is ``path / image_pattern`` with ``{subject}`` filled in.

    Args:
        path: dataset folder.
        image_pattern: relative path containing ``{subject}`` (possibly several times), e.g.
            ``"{subject}/t1w_brain.nii.gz"`` or ``"{subject}_T1.nii.gz"``; no glob characters.
        subjects: ``None`` to discover every subject with an existing image file (sorted ids),
            or the ids to use (order kept), each of which must have its image file.

    Raises:
        InputError: missing folder, bad pattern or id, a listed subject without its image file
            (named), or no subject matching the pattern (path and pattern named).
    """
    path = _check_dataset_path(path)
    _check_pattern("image", image_pattern, need_subject=True)
    if subjects is None:
        regex = _pattern_regex(image_pattern)
        found = set()
        for candidate in path.glob(image_pattern.replace(SUBJECT_FIELD, "*")):
            match = regex.fullmatch(candidate.relative_to(path).as_posix())
            if match and candidate.is_file():
                found.add(match.group("subject"))
        if not found:
            raise InputError(f"no subject in dataset path {path} matches the image pattern {image_pattern!r}")
        return sorted(found)
    if isinstance(subjects, str) or not list(subjects):
        raise InputError(f"subjects {subjects!r} is not allowed; expected a non-empty list of ids or null")
    subjects = list(subjects)
    duplicates = sorted({s for s in subjects if subjects.count(s) > 1})
    if duplicates:
        raise InputError(f"subject {duplicates[0]!r} is listed more than once")
    for subject in subjects:
        _check_subject_id(subject)
        image = _resolve(path, image_pattern, subject)
        if not image.is_file():
            raise InputError(f"subject {subject!r}: image file {image} not found (pattern {image_pattern!r})")
    return subjects


def subject_files(path: Path, pattern_dict: dict[str, str | None], subject: str) -> dict[str, Path]:
    """Resolve a subject's files from patterns: keys ``image`` (required), ``labels``, ``landmarks``, ``mask``.

    ``{subject}`` in a pattern is replaced by the id; it is required in the image pattern and
    optional elsewhere (a pattern without it names one file shared by all subjects). Keys whose
    pattern is ``None`` are left out of the result.

    Returns:
        ``{key: Path}`` of existing files.

    Raises:
        InputError naming the key and file: unknown key, missing image pattern, bad pattern or
        subject id, missing dataset folder or file.
    """
    path = _check_dataset_path(path)
    _check_subject_id(subject)
    unknown = sorted(set(pattern_dict) - set(PATTERN_KEYS))
    if unknown:
        raise InputError(f"file pattern key {unknown[0]!r} is not allowed; allowed: {', '.join(PATTERN_KEYS)}")
    if pattern_dict.get("image") is None:
        raise InputError("file patterns need an 'image' pattern")
    files = {}
    for key in PATTERN_KEYS:
        pattern = pattern_dict.get(key)
        if pattern is None:
            continue
        _check_pattern(key, pattern, need_subject=key == "image")
        file = _resolve(path, pattern, subject)
        if not file.is_file():
            raise InputError(f"subject {subject!r}: {key} file {file} not found (pattern {pattern!r})")
        files[key] = file
    return files


def pattern_files(spec: AdapterConfig, root: Path, patterns: dict[str, str | None], subjects: list[str] | None,
                  limit: int | None = None) -> tuple[list[str], dict[str, SubjectFiles]]:
    """Subjects found by the image pattern (:func:`discover_subjects`, first ``limit``) and their files.

    InputErrors of the pattern functions are prefixed ``config key <where>:``.
    """
    found = spec.wrap(lambda: discover_subjects(root, patterns["image"], subjects))[:limit]
    files = {}
    for subject in found:
        paths = spec.wrap(lambda: subject_files(root, patterns, subject))
        files[subject] = SubjectFiles(**{key: str(path) for key, path in paths.items()})
    return found, files
