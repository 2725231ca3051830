"""Preprocessing of one subject: the registry of steps (:mod:`.steps`: reorient, clip, normalize,
slice, resample, crop-pad, lung-mask, affine-align), the SimpleITK affine pre-alignment
(:mod:`.align`), lung masks of CT (:mod:`.lung`) and quality-control figures (:mod:`.qc`)."""
