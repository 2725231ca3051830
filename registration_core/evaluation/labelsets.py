"""Label-set presets of published evaluations and FreeSurfer structure names.

Presets (``metrics.labels`` in a study config, ``--labels NAME`` of ``evaluate``):

* ``oasis-28``: the 28 FreeSurfer aseg labels of the NODEO paper's OASIS Dice (Wu et al., CVPR
  2022, as in its public evaluation code).
* ``voxelmorph-30``: the 30 aseg labels VoxelMorph's tutorials and neurite-oasis evaluate (the
  28 above plus the left and right choroid plexus, 31 and 63).

Names follow FreeSurfer's ``FreeSurferColorLUT.txt`` (aseg ids, the Desikan-Killiany cortical
parcels 1000 + i / 2000 + i of the DKT protocol, and Mindboggle's cerebellar vermis 630-632);
labels without an entry are named by their number.
"""

from __future__ import annotations

OASIS_28 = (2, 3, 4, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 28, 41, 42, 43, 46, 47, 49, 50, 51, 52, 53, 54, 60)
VOXELMORPH_30 = tuple(sorted((*OASIS_28, 31, 63)))

LABEL_SETS: dict[str, tuple[int, ...]] = {"oasis-28": OASIS_28, "voxelmorph-30": VOXELMORPH_30}
"""Preset name -> its labels (FreeSurfer aseg ids)."""

_ASEG = {
    2: "Left-Cerebral-White-Matter", 3: "Left-Cerebral-Cortex", 4: "Left-Lateral-Ventricle",
    5: "Left-Inf-Lat-Vent", 7: "Left-Cerebellum-White-Matter", 8: "Left-Cerebellum-Cortex",
    10: "Left-Thalamus", 11: "Left-Caudate", 12: "Left-Putamen", 13: "Left-Pallidum", 14: "3rd-Ventricle",
    15: "4th-Ventricle", 16: "Brain-Stem", 17: "Left-Hippocampus", 18: "Left-Amygdala", 24: "CSF",
    26: "Left-Accumbens-area", 28: "Left-VentralDC", 30: "Left-vessel", 31: "Left-choroid-plexus",
    41: "Right-Cerebral-White-Matter", 42: "Right-Cerebral-Cortex", 43: "Right-Lateral-Ventricle",
    44: "Right-Inf-Lat-Vent", 46: "Right-Cerebellum-White-Matter", 47: "Right-Cerebellum-Cortex",
    49: "Right-Thalamus", 50: "Right-Caudate", 51: "Right-Putamen", 52: "Right-Pallidum",
    53: "Right-Hippocampus", 54: "Right-Amygdala", 58: "Right-Accumbens-area", 60: "Right-VentralDC",
    62: "Right-vessel", 63: "Right-choroid-plexus", 72: "5th-Ventricle", 77: "WM-hypointensities",
    80: "non-WM-hypointensities", 85: "Optic-Chiasm", 251: "CC_Posterior", 252: "CC_Mid_Posterior",
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
