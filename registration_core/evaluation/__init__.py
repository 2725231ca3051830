"""From a registration's outputs to a study's conclusions: the metric mathematics
(:mod:`.metrics`), evaluation of one pair (:mod:`.evaluate`), the study tables
(:mod:`.aggregate`) and the statistics of the grid (:mod:`.stats`)."""
