"""Foundations every other part uses: image and field I/O (:mod:`.io`), voxel/physical geometry and
warping (:mod:`.spatial`), typed parameters (:mod:`.params`), provenance records (:mod:`.provenance`),
smoothing and box filters (:mod:`.filters`) and the similarity/regularisation losses of the torch
methods (:mod:`.losses`). Nothing here knows about studies, methods or Snakemake."""
