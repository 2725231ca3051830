"""The jobs of a planned study: one registration + evaluation per method x grid point x pair,
their parameters and resources, the training jobs of learned methods, and the jobs table.
:class:`StudyJobs` is a mixin of :class:`registration_core.study.plan.Study`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registration_core.errors import InputError
from registration_core.evaluation.labelsets import LABEL_SETS, groups
from registration_core.layout import PATHS, reg_file
from registration_core.study.grid import GridPoint, grid_id, value_text
from registration_core.study.resources import register_resources as estimate_register_resources

if TYPE_CHECKING:
    from registration_core.study.plan import Dataset, Training, Truth


REGISTER_ONLY_PARAMS = ("checkpoint", "io_steps", "io_lr")
"""Parameters of a learned method used at registration only (the checkpoint and instance
optimisation; see ``registration_core.methods.training.RUNTIME_PARAMS``): grid points that differ only in
them register with one trained model."""
JOB_COLUMNS = ("study", "dataset", "method", "grid_id", "atlas", "moving", "reg_dir", "metrics", "log")
"""Leading columns of the jobs table; one column per grid factor follows."""


@dataclass(frozen=True)
class Job:
    """One registration + evaluation: ``moving`` onto ``atlas`` with one method's grid point."""

    study: str
    dataset: str
    method: str
    grid_id: str
    atlas: str
    moving: str

    def path(self, key: str) -> str:
        """A per-job path from :data:`PATHS` (``reg_dir`` or ``metrics``)."""
        return PATHS[key].format(
            study=self.study, method=self.method, grid_id=self.grid_id, atlas=self.atlas, moving=self.moving
        )


class StudyJobs:
    """Job lookups of a :class:`~registration_core.study.plan.Study`: grid points, training models,
    registration parameters and resources, job counts and the jobs table."""

    name: str
    config: dict[str, Any]
    base_dir: Path
    pairs: list[tuple[str, str]]
    truth: Truth | None
    training: dict[str, Training | None]
    _owner: dict[str, Dataset]


    def grid_point(self, method: str, grid_id_: str) -> GridPoint:
        """The grid point of ``method`` called ``grid_id_`` (KeyError if the study has none)."""
        return self._points[(method, grid_id_)]

    def variants(self, items: Sequence[tuple[str, ...]]) -> list[tuple[str, ...]]:
        """Distinct kind sets of ``items``, largest first (rule variants and their order)."""
        return sorted(set(items), key=lambda kinds: (-len(kinds), kinds))

    def train_id(self, method: str, grid_id_: str) -> str:
        """The model a grid point of a learned method registers with: the grid id over its keys
        that are not :data:`REGISTER_ONLY_PARAMS` (``default`` when none is left)."""
        values = self.grid_point(method, grid_id_).values
        return grid_id({key: value for key, value in values.items() if key not in REGISTER_ONLY_PARAMS})

    def register_params(self, method: str, grid_id_: str) -> dict[str, Any]:
        """Parameters of a registration job: the grid point's, plus the trained ``checkpoint``."""
        params = dict(self.grid_point(method, grid_id_).params)
        if self.training.get(method) is not None:
            params["checkpoint"] = self.path("model", method=method, grid_id=self.train_id(method, grid_id_))
        return params

    def trained_models(self) -> list[tuple[str, str]]:
        """(method, train id) of every model a ``train`` job makes, in grid order."""
        models = [
            (method, self.train_id(method, point.grid_id))
            for method, points in self.grid.items() if self.training.get(method) for point in points
        ]
        return list(dict.fromkeys(models))

    def train_params(self, method: str, train_id: str) -> dict[str, Any]:
        """Parameters of the training job of model ``train_id``: its grid points' params without
        :data:`REGISTER_ONLY_PARAMS`."""
        point = next(p for p in self.grid[method] if self.train_id(method, p.grid_id) == train_id)
        return {key: value for key, value in point.params.items() if key not in REGISTER_ONLY_PARAMS}

    def register_resources(
        self, method: str, grid_id_: str | None = None, shape: Sequence[int] | None = None, attempt: int = 1
    ) -> dict[str, int]:
        """threads, mem_mb, runtime (minutes), gpu (0 or 1) and cpus_per_gpu of ``method``'s
        registration jobs. With the grid point and the fixed image's ``shape``, memory and time are
        estimated by :func:`registration_core.study.resources.register_resources` (the config's values
        are floors; ``attempt`` > 1 asks for more); without them, the config's values."""
        base = {**self.config["resources"]["register"], **self.config["methods"][method].get("resources", {})}
        use_gpu = bool(self._extra_params(method))
        if grid_id_ is None or shape is None:
            return {**base, "gpu": int(use_gpu), "cpus_per_gpu": base["threads"] if use_gpu else 0}
        params = self.register_params(method, grid_id_)
        return estimate_register_resources(method, params, shape, base, use_gpu, attempt)

    def train_resources(self, method: str) -> dict[str, int]:
        """threads, mem_mb, runtime (minutes) and gpu (0 or 1) of ``method``'s training jobs."""
        return {**self.config["resources"]["train"], "gpu": int(bool(self._extra_params(method)))}

    def evaluate_label_args(self) -> list[str]:
        """``evaluate`` arguments selecting the scored labels (empty for ``all``)."""
        labels = self.config["metrics"]["labels"]
        if isinstance(labels, list):
            return ["--labels", ",".join(str(label) for label in labels)]
        if labels == "all":
            return []
        if labels in LABEL_SETS:
            return ["--labels", labels]
        path = Path(labels) if Path(labels).is_absolute() else self.base_dir / labels
        if not path.is_file():
            raise InputError(f"config key metrics.labels: label file {path} not found (or use 'all', a list or a preset: {', '.join(LABEL_SETS)})")
        return ["--labels-file", str(path)]

    def evaluate_label_settings(self) -> dict[str, Any]:
        """What the scored labels depend on, for Snakemake's rerun check: the ``evaluate`` arguments
        and, for a preset, its labels and groups (a preset edited in the library reruns the
        evaluations that used it)."""
        args = self.evaluate_label_args()
        name = args[1] if args[:1] == ["--labels"] else None
        return {"args": args, "preset": LABEL_SETS.get(name or ""), "groups": groups(name)}

    def _step_jobs(self, subject: str, prepared: bool) -> int:
        """Preprocessing step jobs of a subject: all its steps when it is prepared, else (a reference
        subject only) the steps before its dataset's last ``affine_align`` step."""
        steps = [step["step"] for step in self._owner[subject].preprocess]
        return len(steps) if prepared else len(steps) - 1 - steps[::-1].index("affine_align")

    def jobs_by_rule(self) -> dict[str, int]:
        """Number of jobs of each per-item rule family (for the parse-time summary)."""
        prepared = self.prepared_subjects()
        owners = [self._owner[s] for s in prepared]
        counts = {
            "demo_subject": sum(d.adapter == "demo" for d in owners),
            "import_raw": sum(s in d.raw_imports for s, d in zip(prepared, owners)),
            "import_landmarks": sum(s in d.landmark_imports for s, d in zip(prepared, owners)),
            "make_mask": sum(d.mask is not None for d in owners),
            "prepare": sum(not d.preprocess for d in owners),
            "preprocess": sum(self._step_jobs(s, s in prepared) for s in self.staged_subjects()),
            "qc": len(prepared),
            "synth_pair": len(self.truth.movers) if self.truth else 0,
            "align": len(self.aligned_pairs()),
            "train": len(self.trained_models()),
            "register": len(self.jobs),
            "evaluate": len(self.jobs),
        }
        return {rule: count for rule, count in counts.items() if count or rule in ("register", "evaluate")}

    def describe(self) -> str:
        """One line: subjects, pairs, grid points per method and jobs per rule."""
        grids = ", ".join(f"{method} {len(points)} grid points" for method, points in self.grid.items())
        counts = ", ".join(f"{rule} {count}" for rule, count in self.jobs_by_rule().items())
        return (
            f"study {self.name}: {len(self.dataset.subjects)} subjects, {len(self.pairs)} pairs, {grids}; "
            f"jobs per rule: {counts}"
        )

    def jobs_table(self) -> list[dict[str, str]]:
        """One row per job: :data:`JOB_COLUMNS` then one column per grid factor (union over
        methods, config order). A factor that is a fixed or default parameter of a method shows
        that value; it is empty for a method without that parameter."""
        rows = []
        for job in self.jobs:
            point = self.grid_point(job.method, job.grid_id)
            reg_dir = job.path("reg_dir")
            row = {
                "study": job.study, "dataset": job.dataset, "method": job.method, "grid_id": job.grid_id,
                "atlas": job.atlas, "moving": job.moving, "reg_dir": reg_dir,
                "metrics": job.path("metrics"), "log": str(reg_file(reg_dir, "log")),
            }
            for factor in self.factors:
                value = point.values.get(factor, point.resolved.get(factor, ""))
                row[factor] = "" if value in ("", None) else value_text(value)
            rows.append(row)
        return rows
