"""The ``dirlab`` adapter: DIR-Lab 4DCT (Castillo et al.) raw int16 phase volumes and the 300
extreme-phase landmarks; subjects ``case1-T00``, pairs (fixed phase, each other phase) per case.

Ten cases, ten phases T00..T90 each, as headerless little-endian int16 volumes (.img) storing
HU + 1024, axis i fastest. Shapes and spacings are not in the files: :data:`DIRLAB_CASES` is the
published table. Axial slices: columns toward the patient's left, rows toward posterior, slice 0
the most superior (orientation ``LPI``).
"""

from __future__ import annotations

import re
from pathlib import Path

from registration_core.core.params import Param
from registration_core.data.adapters.base import Adapter, AdapterConfig, Manifest, SubjectFiles
from registration_core.data.imports import LandmarkImport, RawImport, check_raw_size
from registration_core.errors import InputError

# The published table (dir-lab.com "4DCT" data page; Castillo R et al. 2009, Phys Med Biol
# 54:1849, cases 1-5; Castillo E et al. 2010, Phys Med Biol 55:305, cases 6-10): case -> (shape,
# spacing_mm), shape (n_i, n_j, n_k) = (columns, rows, slices).
DIRLAB_CASES: dict[int, tuple[tuple[int, int, int], tuple[float, float, float]]] = {
    1: ((256, 256, 94), (0.97, 0.97, 2.5)),
    2: ((256, 256, 112), (1.16, 1.16, 2.5)),
    3: ((256, 256, 104), (1.15, 1.15, 2.5)),
    4: ((256, 256, 99), (1.13, 1.13, 2.5)),
    5: ((256, 256, 106), (1.10, 1.10, 2.5)),
    6: ((512, 512, 128), (0.97, 0.97, 2.5)),
    7: ((512, 512, 136), (0.97, 0.97, 2.5)),
    8: ((512, 512, 128), (0.97, 0.97, 2.5)),
    9: ((512, 512, 128), (0.97, 0.97, 2.5)),
    10: ((512, 512, 120), (0.97, 0.97, 2.5)),
}
DIRLAB_DTYPE = "<i2"
# Axial slices: columns toward the patient's left, rows toward posterior, slice 0 the most superior
# (ITK direction diag(1, 1, -1), as the headers commonly written for these files state).
DIRLAB_ORIENTATION = "LPI"
DIRLAB_INTERCEPT = -1024.0
DIRLAB_PHASES = tuple(f"T{10 * n:02d}" for n in range(10))
DIRLAB_LANDMARK_PHASES = ("T00", "T50")  # the 300 extreme-phase landmarks
# Published names vary by case: case1_T00_s.img, case2_T00-ssm.img, case6_T00.img; landmarks
# Case1_300_T00_xyz.txt, case6_dirLab300_T00_xyz.txt.
DIRLAB_IMAGE_NAME = re.compile(r"case0*(?P<case>\d+)_(?P<phase>T\d0)(?:[_-][A-Za-z0-9]+)?\.img", re.IGNORECASE)
DIRLAB_LANDMARK_NAME = re.compile(
    r"case0*(?P<case>\d+)_[A-Za-z]*300_(?P<phase>T\d0)_xyz\.txt", re.IGNORECASE
)
PARAMS = (
    Param("path", str, None, "The folder holding the CaseNPack/ folders (searched recursively).", required=True),
    Param("cases", list, None, "Case numbers 1-10 (null: every case found).", nullable=True, item=int),
    Param("phases", list, DIRLAB_LANDMARK_PHASES, "Phases used, T00..T90.", item=str),
    Param("fixed_phase", str, None, "The fixed phase of each case's pairs (null: the first of `phases`).",
          choices=DIRLAB_PHASES, nullable=True),
    Param("landmarks", bool, True, "Read the 300 T00/T50 landmarks (then required)."),
    Param("intercept", float, DIRLAB_INTERCEPT, "Added to the stored values (they are HU + 1024)."),
)


def dirlab_subject_id(case: int, phase: str) -> str:
    """Subject id of a DIR-Lab phase volume: ``case1-T00``."""
    return f"case{case}-{phase}"


def _find_by_name(root: Path, pattern: re.Pattern[str], suffix: str) -> dict[tuple[int, str], Path]:
    """Files under ``root`` (recursively) whose name matches ``pattern`` -> {(case, phase): path}.

    Raises InputError when two files match the same (case, phase).
    """
    found: dict[tuple[int, str], Path] = {}
    for path in sorted(root.rglob(f"*{suffix}")):
        match = pattern.fullmatch(path.name)
        if match is None or not path.is_file():
            continue
        key = (int(match.group("case")), match.group("phase").upper())
        if key in found:
            raise InputError(f"{found[key]} and {path} are both case {key[0]} phase {key[1]}; keep one")
        found[key] = path
    return found


def dirlab_manifest(spec: AdapterConfig) -> Manifest:
    """``dirlab`` adapter: ``path``, ``cases``, ``phases``, ``fixed_phase``, ``landmarks``, ``intercept``."""
    root = spec.folder()
    phases = [phase.upper() for phase in spec.items("phases")]
    for phase in phases:
        if phase not in DIRLAB_PHASES:
            raise spec.error("phases", f"{phase!r} is not allowed; allowed: {', '.join(DIRLAB_PHASES)}")
    fixed_phase = spec.choice("fixed_phase", phases) or phases[0]
    need_landmarks = spec.flag("landmarks")
    intercept = spec.number("intercept")
    images = spec.wrap(lambda: _find_by_name(root, DIRLAB_IMAGE_NAME, ".img"))
    landmarks = spec.wrap(lambda: _find_by_name(root, DIRLAB_LANDMARK_NAME, ".txt")) if need_landmarks else {}
    cases = spec.items("cases")
    if cases is None:
        cases = sorted({case for case, phase in images if phase in phases})
        if not cases:
            raise spec.error("path", f"no DIR-Lab image (caseN_{phases[0]}*.img) found under {root}")
    subjects, files, raw_imports, landmark_imports, pairs = [], {}, {}, {}, []
    for case in cases:
        if case not in DIRLAB_CASES:
            raise spec.error("cases", f"case {case} is not allowed; DIR-Lab 4DCT has cases 1-10")
        shape, spacing = DIRLAB_CASES[case]
        for phase in phases:
            subject = dirlab_subject_id(case, phase)
            if (case, phase) not in images:
                raise spec.error("path", f"no image caseN_{phase}*.img of case {case} under {root}")
            raw = check_raw_size(images[case, phase], shape, DIRLAB_DTYPE)
            points = landmarks.get((case, phase))
            if need_landmarks and phase in DIRLAB_LANDMARK_PHASES and points is None:
                raise spec.error(
                    "path", f"no landmark file case{case}_300_{phase}_xyz.txt under {root} (or set landmarks: false)"
                )
            subjects.append(subject)
            files[subject] = SubjectFiles(image=str(raw), landmarks=None if points is None else str(points))
            raw_imports[subject] = RawImport(str(raw), shape, spacing, DIRLAB_DTYPE, DIRLAB_ORIENTATION, intercept)
            if points is not None:
                landmark_imports[subject] = LandmarkImport(str(points), "dirlab-xyz")
        fixed = dirlab_subject_id(case, fixed_phase)
        pairs += [(fixed, dirlab_subject_id(case, phase)) for phase in phases if phase != fixed_phase]
    return Manifest(tuple(subjects), files, tuple(pairs) or None, raw_imports, landmark_imports)


ADAPTER = Adapter("dirlab", PARAMS, dirlab_manifest, "DIR-Lab 4DCT raw phase volumes and their 300 landmarks.")
