"""Plan-time checks: what the config and the image headers tell before any job runs.

:func:`plan_problems` returns one line per problem, naming the config key and the file:

* grid values that are one value once read by the method's schema (``lr: [0.001, 1e-3]``: YAML
  reads ``1e-3`` as text, the schema as 0.001, so the grid would hold two points of one value);
* a method's size limit (:meth:`registration_core.methods.Method.check_shape`, e.g. NODEO's
  smallest axis, windows larger than the image) against the grid each subject will have after its
  preprocessing (:mod:`registration_core.study.headers`);
* pairs whose images will lie on different grids after preprocessing when their dataset sets no
  ``align`` (registration needs one grid);
* ``metrics.labels`` values found in no label map of the pairs' subjects (they would never be
  scored), and ANOVA responses whose inputs (labels, landmarks, a known truth) no pair has.

Only datasets whose files exist are read (demo subjects and converted raw volumes are made by jobs);
a header that cannot be read, or a geometry the plan cannot predict, is left to the jobs, which
report it as a failure naming the file. The label values are read from the raw label maps, atlases
first, and only as long as some requested value is still unseen.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from registration_core.errors import InputError
from registration_core.evaluation import registry
from registration_core.methods import get_method
from registration_core.study.headers import Grid, predict_grid, read_grid

if TYPE_CHECKING:
    from registration_core.study.plan import Study

MAX_NAMED = 3
"""Subjects named in one problem line before ``and N more``."""
PAIR_INPUTS = {"labels": "labels", "moving_labels": "labels", "landmarks": "landmarks", "truth": "truth"}
"""Metric inputs (:data:`registration_core.evaluation.registry.INPUTS`) a pair must have, by the pair kind that gives them."""


def _names(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_NAMED])
    return shown + (f" and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else "")


def duplicate_grid_values(study: Study) -> list[str]:
    """Grid keys with two values that the method's schema reads as one."""
    problems = []
    for method, spec in study.config["methods"].items():
        schema = get_method(method)
        params = dict(spec.get("params", {}))
        for key, values in spec.get("grid", {}).items():
            seen: dict[str, Any] = {}
            for value in values:
                read = schema.resolve_params({**params, key: value})[key]
                text = repr(read)
                if text in seen:
                    problems.append(
                        f"config key methods.{method}.grid.{key}: {seen[text]!r} and {value!r} are one value ({read!r}) "
                        "once read; list each value once"
                    )
                    break
                seen[text] = value
    return problems


class PlanGrids:
    """The predicted grid of every prepared subject of a study (None where unknown), memoised."""

    def __init__(self, study: Study) -> None:
        self.study = study
        self._grids: dict[tuple[str, int], Grid | None] = {}

    def raw_path(self, subject: str, kind: str = "image") -> Path | None:
        """The dataset file of a subject as it exists before any job (None: made by a job, or absent)."""
        dataset = self.study.owner(subject)
        if dataset.adapter == "demo" or subject in dataset.raw_imports:
            return None
        path = dataset.files[subject].get(kind)
        if path is None:
            return None
        for candidate in (Path(path), self.study.base_dir / path):
            if candidate.is_file():
                return candidate
        return None

    def at(self, subject: str, position: int) -> Grid | None:
        """The subject's grid before its preprocessing step ``position`` (0-based; the number of
        steps: the prepared grid)."""
        key = (subject, position)
        if key not in self._grids:
            self._grids[key] = None  # a reference cycle ends as unknown
            dataset = self.study.owner(subject)
            path = self.raw_path(subject)
            raw = None if path is None else read_grid(path)
            from registration_core.preprocessing.steps import validate_steps

            steps = validate_steps(list(dataset.preprocess)[:position])
            steps = [{**step, "step": original["step"]} for step, original in zip(steps, dataset.preprocess)]
            reference = dataset.reference

            def reference_grid(before: int) -> Grid | None:
                return None if reference is None else self.at(reference, before)

            self._grids[key] = predict_grid(raw, steps, reference_grid)
        return self._grids[key]

    def prepared(self, subject: str) -> Grid | None:
        """The grid of a subject's prepared image (None for truth movers and unknown grids)."""
        if self.study.truth is not None and subject in self.study.truth.movers:
            return None
        return self.at(subject, len(self.study.owner(subject).preprocess))


def size_problems(study: Study, grids: PlanGrids) -> list[str]:
    """Methods that cannot register the prepared images (their declared size limits)."""
    subjects = list(dict.fromkeys(s for pair in study.pairs for s in pair))
    problems = []
    for method, points in study.grid.items():
        spec = get_method(method)
        failing: dict[str, list[str]] = {}
        for subject in subjects:
            grid = grids.prepared(subject)
            if grid is None:
                continue
            for point in points:
                try:
                    spec.check_shape(grid.shape, point.resolved, grid.spacing)
                except InputError as exc:
                    failing.setdefault(str(exc), []).append(f"{subject} ({grids.raw_path(subject)})")
                    break
        for reason, names in failing.items():
            problems.append(f"config key methods.{method}: {reason}: subject {_names(names)} after preprocessing")
    return problems


def grid_problems(study: Study, grids: PlanGrids) -> list[str]:
    """Pairs that will lie on different grids after preprocessing, in datasets without ``align``."""
    problems: dict[str, list[str]] = {}
    for atlas, moving in study.pairs:
        if study.aligned(atlas, moving):
            continue
        fixed_grid, moving_grid = grids.prepared(atlas), grids.prepared(moving)
        if fixed_grid is None or moving_grid is None:
            continue
        difference = fixed_grid.difference(moving_grid)
        if difference is not None:
            dataset = study.owner(moving).name
            problems.setdefault(dataset, []).append(f"{moving} ({grids.raw_path(moving)}) onto {atlas}: {difference}")
    return [
        f"config key datasets.{name}: pairs on different grids after preprocessing, {_names(found)}; registration "
        f"needs one grid: resample / crop_pad them to one in datasets.{name}.preprocess, or set datasets.{name}.align"
        for name, found in problems.items()
    ]


def _wanted_labels(study: Study) -> dict[int, set[int]] | None:
    """The labels ``metrics.labels`` scores, each with the label-map values it covers (itself, or
    a merging preset's group); None: ``all``."""
    from registration_core.evaluation.evaluate import parse_label_spec
    from registration_core.evaluation.labelsets import groups

    args = study.evaluate_label_args()
    if not args:
        return None
    flag, value = args
    if flag == "--labels" and (merged := groups(value)) is not None:
        return {label: set(values) for label, values in merged.items()}
    labels = parse_label_spec(value, None) if flag == "--labels" else parse_label_spec(None, Path(value))
    return {label: {label} for label in labels}


def _label_values(path: Path) -> set[int]:
    from registration_core.core.io import load_image

    return {int(v) for v in np.unique(load_image(path, "labels").data)}


def label_problems(study: Study, grids: PlanGrids) -> list[str]:
    """``metrics.labels`` labels that no label map of the pairs' subjects holds (for a merged label:
    none of its values)."""
    labelled = [pair for pair in study.pairs if "labels" in study.pair_kinds(*pair)]
    wanted = _wanted_labels(study) if labelled else None
    if not wanted:
        return []
    atlases = list(dict.fromkeys(atlas for atlas, _ in labelled))
    others = [s for s in dict.fromkeys(s for pair in labelled for s in pair) if s not in atlases]
    paths = [p for p in (grids.raw_path(s, "labels") for s in [*atlases, *others]) if p is not None]
    if not paths:
        return []
    missing = {label: values for label, values in wanted.items() if label != 0}
    for path in paths:
        present = _label_values(path)
        missing = {label: values for label, values in missing.items() if not values & present}
        if not missing:
            return []
    shown = ", ".join(str(v) for v in sorted(missing))
    return [f"config key metrics.labels: label value(s) {shown} are in none of the {len(paths)} label maps of the pairs "
            f"(e.g. {paths[0]}); they would never be scored"]


def pair_inputs(study: Study) -> set[str]:
    """What the study's pairs have, among ``labels``, ``landmarks`` and ``truth`` (known displacement)."""
    kinds: set[str] = set()
    for pair in study.pairs:
        kinds.update(study.pair_kinds(*pair))
        if study.truth is not None and pair[1] in study.truth.movers:
            kinds.add("truth")
    return kinds


def missing_inputs(response: str, kinds: set[str]) -> list[str]:
    """The pair inputs (``labels``, ``landmarks``, ``truth``) metric ``response`` needs beyond ``kinds``."""
    metric = registry.find(response)
    if metric is None:
        return []
    return sorted({PAIR_INPUTS[i] for i in metric.inputs if i in PAIR_INPUTS} - kinds)


def response_problems(study: Study) -> list[str]:
    """ANOVA responses needing inputs (labels, landmarks, a known truth) that no pair has (the
    ANOVA would find no such column at the end of the study). The default responses are narrowed
    to what the pairs give by the plan (:class:`registration_core.study.plan.Study`), so these are
    the config's own."""
    if not study.config["anova"]["factors"]:  # no ANOVA runs
        return []
    kinds = pair_inputs(study)
    return [
        f"config key anova.responses: {response} needs {' and '.join(needed)}, which no pair of the study has"
        for response in study.config["anova"]["responses"] if (needed := missing_inputs(response, kinds))
    ]


def plan_problems(study: Study, check_files: bool = True) -> list[str]:
    """Every problem the config (and, with ``check_files``, the headers and label maps) show, one
    line each (empty: none)."""
    grids = PlanGrids(study)
    checks: Iterable[list[str]] = (duplicate_grid_values(study), response_problems(study))
    if check_files:
        checks = (*checks, size_problems(study, grids), grid_problems(study, grids), label_problems(study, grids))
    return [line for lines in checks for line in lines]
