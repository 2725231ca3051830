"""Where a planned study's files are: the inputs and outputs of every job, from the templates of
:data:`registration_core.layout.PATHS`. :class:`StudyFiles` is a mixin of
:class:`registration_core.study.plan.Study`, which provides the attributes it reads."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registration_core.layout import PATHS, TRUTH_FILES, TRUTH_INPUTS

if TYPE_CHECKING:
    from registration_core.study.plan import Dataset, Training, Truth


class StudyFiles:
    """File lookups of a :class:`~registration_core.study.plan.Study` (the workflow's inputs and
    outputs per subject, pair, stage and model). Reads the study's ``name``, ``config``, ``pairs``,
    ``truth``, ``training`` and ``_owner`` (subject -> dataset)."""

    name: str
    config: dict[str, Any]
    base_dir: Path
    pairs: list[tuple[str, str]]
    truth: Truth | None
    training: dict[str, Training | None]
    _owner: dict[str, Dataset]


    def path(self, key: str, **fields: str) -> str:
        """A path template of :data:`PATHS` with the study filled in (and any ``fields`` given);
        other ``{placeholders}`` are kept for Snakemake wildcards."""
        template = PATHS[key]
        values = {name: "{" + name + "}" for name in re.findall(r"\{(\w+)\}", template)}
        return template.format(**{**values, "study": self.name, **fields})

    def owner(self, subject: str) -> Dataset:
        """The dataset that prepares ``subject`` (KeyError for a truth moving subject)."""
        return self._owner[subject]

    def prepared_subjects(self) -> list[str]:
        """Subjects with a ``prepare`` job: those of the pairs, the truth base and the training sets."""
        wanted = {s for pair in self.pairs for s in pair}
        for training in self.training.values():
            if training is not None:
                wanted.update(training.subjects + training.val_subjects)
        return [s for s in self._owner if s in wanted]

    def subject_kinds(self, subject: str) -> tuple[str, ...]:
        """Optional prepared files of a subject, among ``labels``, ``landmarks``, ``mask``."""
        if self.truth is not None and subject in self.truth.movers:
            return ("labels",) if "labels" in self.subject_kinds(self.truth.subject) else ()
        return tuple(kind for kind in ("labels", "landmarks", "mask") if kind in self._owner[subject].files[subject])

    def truth_files(self, **fields: str) -> dict[str, str]:
        """Files a ``synth-pair`` job writes (:data:`TRUTH_FILES`; moving labels and mask only
        when the base subject has them); ``moving=<id>`` fills the ``{moving}`` wildcard."""
        assert self.truth is not None
        base_kinds = self.subject_kinds(self.truth.subject)
        folder = self.path("truth_dir", **fields)
        return {
            key: f"{folder}/{TRUTH_FILES[key]}" for key in TRUTH_INPUTS
            if key not in ("moving_labels", "mask") or key.removeprefix("moving_") in base_kinds
        }

    def prepared_files(self, subject: str) -> dict[str, str]:
        """``image`` and the optional files of a subject after preprocessing (truth movers: synth-pair outputs)."""
        if self.truth is not None and subject in self.truth.movers:
            truth = self.truth_files(moving=subject)
            files = {"image": truth["moving"]}
            if "moving_labels" in truth:
                files["labels"] = truth["moving_labels"]
            return files
        return {kind: self.path(f"prep_{kind}", subject=subject) for kind in ("image", *self.subject_kinds(subject))}

    def stage_files(self, subject: str, position: int) -> dict[str, str]:
        """``image`` and optional files of a subject after its preprocessing step ``position``
        (1-based): the raw files for 0, the prepared files after the last step, else the files of
        stage ``<position>-<step>`` (results/<study>/prep/<subject>/stages/, temporary)."""
        dataset = self._owner[subject]
        if position == 0:
            return dict(dataset.files[subject])
        if position == len(dataset.preprocess):
            return self.prepared_files(subject)
        stage = f"{position}-{dataset.preprocess[position - 1]['step']}"
        return {kind: self.path(f"stage_{kind}", subject=subject, stage=stage) for kind in ("image", *self.subject_kinds(subject))}

    def step_inputs(self, subject: str, position: int) -> dict[str, str]:
        """Files the job of a subject's preprocessing step ``position`` (1-based) reads: the files of
        the stage before and, for an ``affine_align`` step, ``reference``: the image of the dataset's
        reference subject at that same stage."""
        dataset = self._owner[subject]
        files = self.stage_files(subject, position - 1)
        if dataset.preprocess[position - 1]["step"] == "affine_align":
            assert dataset.reference is not None
            files["reference"] = self.stage_files(dataset.reference, position - 1)["image"]
        return files

    def staged_subjects(self) -> list[str]:
        """Subjects with preprocessing jobs: the prepared ones and the ``affine_align`` references of their datasets."""
        prepared = self.prepared_subjects()
        references = {self._owner[s].reference for s in prepared} - {None}
        return [s for s in self._owner if s in prepared or s in references]

    def pair_kinds(self, atlas: str, moving: str) -> tuple[str, ...]:
        """``labels`` / ``landmarks`` when both subjects of the pair have them (truth pairs always have landmarks)."""
        if self.truth is not None and moving in self.truth.movers:
            return (*self.subject_kinds(moving), "landmarks")
        atlas_kinds = self.subject_kinds(atlas)
        return tuple(kind for kind in ("labels", "landmarks") if kind in atlas_kinds and kind in self.subject_kinds(moving))

    def aligned(self, atlas: str, moving: str) -> bool:
        """Whether the pair's moving image is pre-aligned to the atlas (its dataset's ``align``)."""
        return moving in self._owner and self._owner[moving].align is not None

    def align_outputs(self, atlas: str, moving: str, kinds: Sequence[str]) -> dict[str, str]:
        """The moving image (and labels / landmarks among ``kinds``) pre-aligned to the atlas grid."""
        return {
            kind: self.path(f"aligned_{kind}", atlas=atlas, moving=moving)
            for kind in ("image", *kinds) if kind in ("image", "labels", "landmarks")
        }

    def pair_files(self, atlas: str, moving: str) -> dict[str, str]:
        """Files of one registration pair, keyed like the command-line options they go to:
        ``fixed``, ``moving`` and, when the pair has them, ``fixed_labels``, ``moving_labels``,
        ``fixed_landmarks``, ``moving_landmarks``; ``mask`` (the atlas's mask) and
        ``truth_displacement`` (known-truth pairs). The moving files are the pre-aligned ones
        when the dataset sets ``align``."""
        kinds = self.pair_kinds(atlas, moving)
        fixed, moving_files = self.prepared_files(atlas), self.prepared_files(moving)
        if self.aligned(atlas, moving):
            moving_files = self.align_outputs(atlas, moving, kinds)
        files = {"fixed": fixed["image"], "moving": moving_files["image"]}
        if "labels" in kinds:
            files.update(fixed_labels=fixed["labels"], moving_labels=moving_files["labels"])
        if self.truth is not None and moving in self.truth.movers:
            truth = self.truth_files(moving=moving)
            files.update({key: truth[key] for key in ("fixed_landmarks", "moving_landmarks", "truth_displacement")})
        elif "landmarks" in kinds:
            files.update(fixed_landmarks=fixed["landmarks"], moving_landmarks=moving_files["landmarks"])
        if "mask" in fixed:
            files["mask"] = fixed["mask"]
        return files

    def aligned_pairs(self) -> list[tuple[str, str]]:
        """(atlas, moving) of every pre-alignment: registered pairs of a dataset with ``align``, and
        (``align_to``, subject) for the training images of a learned method."""
        pairs = [pair for pair in self.pairs if self.aligned(*pair)]
        for training in self.training.values():
            if training is not None and training.align_to is not None:
                pairs += [(training.align_to, s) for s in training.subjects + training.val_subjects]
        return list(dict.fromkeys(pairs))

    def train_files(self, method: str) -> dict[str, list[str]]:
        """``images`` (and ``labels`` when every training and validation image has them),
        ``val_images`` (and ``val_labels``): prepared, or pre-aligned to ``align_to``."""
        training = self.training[method]
        assert training is not None
        groups = {prefix: subjects for prefix, subjects in (("", training.subjects), ("val_", training.val_subjects)) if subjects}
        if training.align_to is None:
            found = {prefix: [self.prepared_files(s) for s in subjects] for prefix, subjects in groups.items()}
        else:
            found = {
                prefix: [self.align_outputs(training.align_to, s, self.pair_kinds(training.align_to, s)) for s in subjects]
                for prefix, subjects in groups.items()
            }
        labelled = all("labels" in f for group in found.values() for f in group)
        files: dict[str, list[str]] = {}
        for prefix, group in found.items():
            files[f"{prefix}images"] = [f["image"] for f in group]
            if labelled:
                files[f"{prefix}labels"] = [f["labels"] for f in group]
        return files
