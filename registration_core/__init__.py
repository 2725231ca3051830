"""registration_core: deformable image registration for dataset-scale studies.

Conventions used throughout the package:

* arrays are in array index order ``(i, j[, k])`` as stored in NIfTI;
* displacements ``disp_vox`` have shape ``(ndim, *spatial)`` (or ``(B, ndim, *spatial)``
  for batched tensors) and are expressed in voxels of the fixed (atlas) grid: the map
  ``x -> x + u(x)`` sends a fixed-image point to the corresponding moving-image point;
* on disk, displacement fields are ITK vector images in physical millimetres (LPS).
"""

__version__ = "0.1.0"
