"""The ``demo`` adapter's config keys: subjects generated from the MNI152 template shipped with
nilearn (:mod:`registration_core.data.demo`).

The study makes the subjects itself (``demo-00`` = the template, ``demo-01``, ... deformed from it;
:mod:`registration_core.study.plan`), so the adapter has no manifest builder; its keys are
validated, with these defaults, by the config schema.
"""

from __future__ import annotations

from registration_core.core.params import Param
from registration_core.data.adapters.base import Adapter

PARAMS = (
    Param("n_subjects", int, 5, "Number of generated subjects, named demo-00, demo-01, ...", minimum=2, maximum=100),
    Param("seed", int, 0, "Seed of the random deformations and intensity changes.", minimum=0),
    Param("spacing_mm", float, 2.0, "Isotropic voxel spacing of the generated volumes (mm).",
          minimum=0.0, exclusive_minimum=True),
    Param("max_disp_mm", float, 8.0, "Largest displacement of the random deformation of a subject (mm).", minimum=0.0),
)

ADAPTER = Adapter("demo", PARAMS, None, "Subjects generated from the MNI152 template shipped with nilearn.")
