"""The ``truth`` adapter's config keys: known-truth pairs deformed from a prepared subject of another
dataset (:mod:`registration_core.data.truth`, ``synth-pair`` command).

The study makes the subjects itself (:mod:`registration_core.study.plan`), so the adapter has no
manifest builder; its keys are validated, with these defaults, by the config schema.
"""

from __future__ import annotations

from registration_core.core.params import Param
from registration_core.data.adapters.base import Adapter
from registration_core.data.truth import MOTIONS

PARAMS = (
    Param("base", str, None, "Name of the dataset whose prepared subject is deformed.", required=True),
    Param("subject", str, None, "Subject of `base` used as the fixed image.", required=True),
    Param("motion", str, None, "`respiratory` (fixed inhale -> moving exhale: diaphragm shift + transversal "
          "contraction + local field, 3D CT), `respiratory-inhale` (the reverse: fixed exhale-like, moving inhale; "
          "use it when the scan ends close below the lungs), `single` (smooth B-spline field) or `mixed` "
          "(multi-frequency inside the mask).", choices=MOTIONS, required=True),
    Param("max_disp_mm", float, None, "Largest displacement of the known field (mm).",
          minimum=0.0, exclusive_minimum=True, required=True),
    Param("noise_std", float, 0.0, "Standard deviation of the Gaussian noise added to the moving image (image units).",
          minimum=0.0),
    Param("n_pairs", int, 1, "Number of moving images (pairs).", minimum=1, maximum=100),
    Param("seed", int, 0, "Seed of pair 0; pair k uses seed + k.", minimum=0),
    Param("n_landmarks", int, 100, "Landmarks detected in the fixed image and carried by the known field.", minimum=1),
)

ADAPTER = Adapter(
    "truth", PARAMS, None,
    "Known-truth pairs: subject `subject` of dataset `base`, after the base's preprocessing (and mask), is the "
    "fixed image; `n_pairs` moving images <subject>-m0, -m1, ... are it deformed by a known displacement "
    "(registration_core.data.truth, `synth-pair` command) plus noise, with `n_landmarks` corresponding landmarks. "
    "Its pairs are (subject, each moving image); evaluation reports the error against the true displacement "
    "(tre_truth_mm).",
)
