"""Label-set presets of published evaluations and FreeSurfer structure names.

Presets (``metrics.labels`` in a study config, ``--labels NAME`` of ``evaluate``):

* ``oasis-28``: the 28 FreeSurfer aseg labels of the NODEO paper's OASIS Dice (Wu et al., CVPR
  2022, as in its public evaluation code).
* ``voxelmorph-30``: the 30 aseg labels VoxelMorph's tutorials and neurite-oasis evaluate (the
  28 above plus the left and right choroid plexus, 31 and 63).
* ``mindboggle-oasis-28``: the 28 structures above as far as Mindboggle-101's manual labels
  (OASIS-TRT-20, DKT protocol) hold them: 26, scored on merged labels (:data:`LABEL_GROUPS`).
  Cerebral cortex 3 / 42 = the union of the DKT cortical parcels 1000-1035 / 2000-2035;
  cerebellum cortex 8 / 47 = Mindboggle's Cerebellum-Exterior 6 / 45; the other 22 (ventricles,
  cerebellar white matter 7 / 46, thalamus, caudate, putamen, pallidum, brain stem, hippocampus,
  amygdala, CSF, ventral DC) carry the same FreeSurfer ids. Cerebral white matter (2 / 41) is not
  labelled in Mindboggle-101 and is missing; the vermis (630-632, not lateralised) is left out.

Names follow FreeSurfer's ``FreeSurferColorLUT.txt`` (aseg ids, the Desikan-Killiany cortical
parcels 1000 + i / 2000 + i of the DKT protocol, and Mindboggle's cerebellar vermis 630-632);
labels without an entry are named by their number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

OASIS_28 = (2, 3, 4, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 28, 41, 42, 43, 46, 47, 49, 50, 51, 52, 53, 54, 60)
VOXELMORPH_30 = tuple(sorted((*OASIS_28, 31, 63)))

_SAME_ID = (4, 7, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 28, 43, 46, 49, 50, 51, 52, 53, 54, 60)
MINDBOGGLE_OASIS_28: dict[int, tuple[int, ...]] = dict(sorted({
    **{label: (label,) for label in _SAME_ID},
    3: tuple(range(1000, 1036)), 42: tuple(range(2000, 2036)), 8: (6,), 47: (45,),
}.items()))
"""The NODEO paper's structures on Mindboggle-101 labels: FreeSurfer aseg id -> Mindboggle ids merged into it."""

LABEL_GROUPS: dict[str, dict[int, tuple[int, ...]]] = {"mindboggle-oasis-28": MINDBOGGLE_OASIS_28}
"""Presets scored on merged labels: preset -> {scored label: the label-map values it covers}."""

LABEL_SETS: dict[str, tuple[int, ...]] = {
    "oasis-28": OASIS_28, "voxelmorph-30": VOXELMORPH_30,
    **{name: tuple(groups) for name, groups in LABEL_GROUPS.items()},
}
"""Preset name -> its scored labels (FreeSurfer aseg ids)."""

_ASEG = {
    2: "Left-Cerebral-White-Matter", 3: "Left-Cerebral-Cortex", 4: "Left-Lateral-Ventricle",
    5: "Left-Inf-Lat-Vent", 6: "Left-Cerebellum-Exterior", 7: "Left-Cerebellum-White-Matter", 8: "Left-Cerebellum-Cortex",
    10: "Left-Thalamus", 11: "Left-Caudate", 12: "Left-Putamen", 13: "Left-Pallidum", 14: "3rd-Ventricle",
    15: "4th-Ventricle", 16: "Brain-Stem", 17: "Left-Hippocampus", 18: "Left-Amygdala", 24: "CSF",
    26: "Left-Accumbens-area", 28: "Left-VentralDC", 30: "Left-vessel", 31: "Left-choroid-plexus",
    41: "Right-Cerebral-White-Matter", 42: "Right-Cerebral-Cortex", 43: "Right-Lateral-Ventricle",
    44: "Right-Inf-Lat-Vent", 45: "Right-Cerebellum-Exterior", 46: "Right-Cerebellum-White-Matter", 47: "Right-Cerebellum-Cortex",
    49: "Right-Thalamus", 50: "Right-Caudate", 51: "Right-Putamen", 52: "Right-Pallidum",
    53: "Right-Hippocampus", 54: "Right-Amygdala", 58: "Right-Accumbens-area", 60: "Right-VentralDC",
    62: "Right-vessel", 63: "Right-choroid-plexus", 72: "5th-Ventricle", 77: "WM-hypointensities",
    80: "non-WM-hypointensities", 85: "Optic-Chiasm", 91: "Left-basal-forebrain",
    92: "Right-basal-forebrain", 251: "CC_Posterior", 252: "CC_Mid_Posterior",
    253: "CC_Central", 254: "CC_Mid_Anterior", 255: "CC_Anterior",
    630: "Cerebellar-Vermal-Lobules-I-V", 631: "Cerebellar-Vermal-Lobules-VI-VII",
    632: "Cerebellar-Vermal-Lobules-VIII-X",
}
_DESIKAN = (
    "unknown", "bankssts", "caudalanteriorcingulate", "caudalmiddlefrontal", "corpuscallosum", "cuneus",
    "entorhinal", "fusiform", "inferiorparietal", "inferiortemporal", "isthmuscingulate", "lateraloccipital",
    "lateralorbitofrontal", "lingual", "medialorbitofrontal", "middletemporal", "parahippocampal",
    "paracentral", "parsopercularis", "parsorbitalis", "parstriangularis", "pericalcarine", "postcentral",
    "posteriorcingulate", "precentral", "precuneus", "rostralanteriorcingulate", "rostralmiddlefrontal",
    "superiorfrontal", "superiorparietal", "superiortemporal", "supramarginal", "frontalpole",
    "temporalpole", "transversetemporal", "insula",
)
FREESURFER_NAMES: dict[int, str] = {
    **_ASEG,
    **{1000 + i: f"ctx-lh-{name}" for i, name in enumerate(_DESIKAN)},
    **{2000 + i: f"ctx-rh-{name}" for i, name in enumerate(_DESIKAN)},
}
"""FreeSurferColorLUT names of the labels this project's data use (aseg, DKT cortex, vermis)."""


def structure_name(label: int) -> str:
    """FreeSurfer name of ``label``, or ``label <n>`` when the lookup table here has none."""
    return FREESURFER_NAMES.get(int(label), f"label {int(label)}")


def preset(name: str) -> tuple[int, ...] | None:
    """The labels of preset ``name``, or None when ``name`` is not a preset."""
    return LABEL_SETS.get(name.strip())


def groups(name: str | None) -> dict[int, tuple[int, ...]] | None:
    """The label groups of merging preset ``name`` (see :data:`LABEL_GROUPS`), else None."""
    return None if name is None else LABEL_GROUPS.get(name.strip())


def merge_labels(data: np.ndarray, label_groups: Mapping[int, Sequence[int]]) -> np.ndarray:
    """Label map ``data`` (any shape, integer values) relabelled by ``label_groups``: a voxel whose
    value is among a group's sources takes the group's label, every other voxel 0. ValueError when
    a value is the source of two groups."""
    sources = [value for values in label_groups.values() for value in values]
    shared = sorted({value for value in sources if sources.count(value) > 1})
    if shared:
        raise ValueError(f"label groups: label value(s) {shared} belong to two groups")
    lookup = {int(value): int(label) for label, values in label_groups.items() for value in values}
    present, inverse = np.unique(data, return_inverse=True)
    return np.array([lookup.get(int(v), 0) for v in present], dtype=data.dtype)[inverse].reshape(data.shape)
