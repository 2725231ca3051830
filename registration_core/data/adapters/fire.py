"""The ``fire`` adapter: FIRE fundus image pairs (Hernandez-Matas et al. 2017); subjects ``A01-1``
(fixed) and ``A01-2`` (moving), one pair per image pair.

Layout: Images/<X><NN>_1.jpg and _2.jpg (RGB fundus photographs, 2912x2912), "Ground Truth"/
control_points_<X><NN>_1_2.txt with one correspondence per line: x_1 y_1 x_2 y_2 in pixels
(x = column, y = row) of image 1 (fixed) and image 2 (moving). Categories: S (large overlap),
P (small overlap), A (anatomical changes). The pictures are imported as their green channel.
"""

from __future__ import annotations

import re

from registration_core.core.params import Param
from registration_core.data.adapters.base import Adapter, AdapterConfig, Manifest, SubjectFiles
from registration_core.data.imports import LandmarkImport, RawImport, picture_shape

FIRE_CATEGORIES = ("A", "P", "S")
FIRE_POINTS_NAME = re.compile(r"control_points_(?P<pair>[APS]\d+)_1_2\.txt")
PARAMS = (
    Param("path", str, None, "The folder holding Images/ and 'Ground Truth/'.", required=True),
    Param("category", str, None, "A, P or S (null: all categories).", choices=FIRE_CATEGORIES, nullable=True),
    Param("spacing_mm", float, 1.0, "Pixel size (mm); 1 reports TRE in pixels.", minimum=0.0, exclusive_minimum=True),
)


def fire_subject_id(pair: str, image: int) -> str:
    """Subject id of a FIRE image: ``A01-1`` (fixed) or ``A01-2`` (moving)."""
    return f"{pair}-{image}"


def fire_manifest(spec: AdapterConfig) -> Manifest:
    """``fire`` adapter: ``path``, ``category`` (A|P|S, all when absent), ``spacing_mm`` (pixel size, 1)."""
    root = spec.folder()
    category = spec.choice("category")
    spacing = spec.number("spacing_mm")
    images_dir, points_dir = root / "Images", root / "Ground Truth"
    for folder in (images_dir, points_dir):
        if not folder.is_dir():
            raise spec.error("path", f"folder {folder} not found (FIRE has Images/ and 'Ground Truth/')")
    point_files = {
        match.group("pair"): path
        for path in sorted(points_dir.iterdir())
        if (match := FIRE_POINTS_NAME.fullmatch(path.name)) and match.group("pair")[0] in (category or FIRE_CATEGORIES)
    }
    if not point_files:
        raise spec.error("path", f"no control_points_{category or 'X'}NN_1_2.txt in {points_dir}")
    subjects, files, raw_imports, landmark_imports, pairs = [], {}, {}, {}, []
    for pair, points in point_files.items():
        for image, side in ((1, "fire-fixed"), (2, "fire-moving")):
            subject, path = fire_subject_id(pair, image), images_dir / f"{pair}_{image}.jpg"
            if not path.is_file():
                raise spec.error("path", f"image {path} of {points.name} not found")
            shape = picture_shape(path)
            subjects.append(subject)
            files[subject] = SubjectFiles(image=str(path), landmarks=str(points))
            raw_imports[subject] = RawImport(str(path), shape, (spacing, spacing), "u1")
            landmark_imports[subject] = LandmarkImport(str(points), side)
        pairs.append((fire_subject_id(pair, 1), fire_subject_id(pair, 2)))
    return Manifest(tuple(subjects), files, tuple(pairs), raw_imports, landmark_imports)


ADAPTER = Adapter("fire", PARAMS, fire_manifest, "FIRE fundus photograph pairs with their control points.")
