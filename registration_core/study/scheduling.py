"""Keep Snakemake's local scheduler within ``--cores`` (and every other ``--resources`` limit).

Why running jobs could hold more threads than ``--cores``: Snakemake 9.10 to at least 9.15 select
the jobs to start in ``JobScheduler.job_selector``. When exactly one job is ready, that method
returns the job chosen by the greedy selector *before* the line that subtracts the chosen jobs'
resources from what is free (``update_available_resources``); the job's threads are still given
back when it ends (``_free_resources``). Every job that was started alone therefore adds its
threads (and ``mem_mb``, ``gpu``) to the free pool once more. In a study where jobs become ready one
by one -- a registration waits for its pair's ``align`` job, one training job runs alone --
``snakemake --cores 2`` soon starts three registrations of ``threads: 2`` at once (upstream report:
snakemake/snakemake#3913). It does not depend on ``threads:`` being a function: a callable
``threads`` of the wildcards is evaluated before scheduling, like a number.

:func:`guard_scheduler` wraps ``job_selector`` so that the chosen jobs' resources are always taken
from the free pool exactly once: after the original selection it compares the free pool with what
it was before; when a non-empty selection left it unchanged (the faulty path), it subtracts the
jobs' resources itself. When a Snakemake release subtracts them on that path too, the pool has
changed and the wrapper does nothing, so the guard never counts a job twice. Freeing resources
happens in the same scheduler thread as selection (``_finish_jobs`` / ``_error_jobs`` in the
scheduling loop), so the before/after comparison is not raced.

Imported only by the workflow (``workflow/rules/common.smk``); the library does not need Snakemake.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

GUARD_MARKER = "_registration_core_resource_guard"
"""Attribute set on the wrapped ``job_selector`` (the guard is installed once per process)."""
UNCOUNTED = ("_job_count",)
"""Free-pool entries Snakemake itself resets before each selection (the job-rate limiter)."""


def missing_subtraction(
    before: Mapping[str, int], after: Mapping[str, int], selected: Iterable[Any], names: Iterable[str]
) -> dict[str, int]:
    """The resources the selection of ``selected`` jobs did not take from the free pool.

    ``before`` / ``after``: the free pool around the selection (resource name -> amount);
    ``selected``: the chosen jobs (objects with ``scheduler_resources``, a mapping);
    ``names``: the limited resources (the scheduler's global resources).
    Returns ``{name: amount}`` to subtract when the pool did not change at all although the jobs
    need some of it (the faulty path); ``{}`` when the selection was accounted for already.
    """
    jobs = list(selected)
    counted = [name for name in names if name not in UNCOUNTED]
    needed = {name: sum(int(job.scheduler_resources.get(name, 0) or 0) for job in jobs) for name in counted}
    if not jobs or not any(needed.values()):
        return {}
    if any(after.get(name) != before.get(name) for name in counted):
        return {}
    return {name: amount for name, amount in needed.items() if amount}


def _guarded(job_selector: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def guarded_job_selector(self: Any, jobs: Any) -> Any:
        before = dict(self.resources)
        selected = job_selector(self, jobs)
        missing = missing_subtraction(before, self.resources, selected or (), self.global_resources)
        if missing:
            with self._lock:
                for name, amount in missing.items():
                    self.resources[name] -= amount
        return selected

    setattr(guarded_job_selector, GUARD_MARKER, True)
    guarded_job_selector.__doc__ = job_selector.__doc__
    return guarded_job_selector


def guard_scheduler() -> bool:
    """Install the guard on Snakemake's ``JobScheduler`` (once per process). Returns True when it
    is installed (now or before), False when this Snakemake has no such scheduler method (nothing
    is changed then)."""
    try:
        from snakemake.scheduling.job_scheduler import JobScheduler
    except ImportError:
        return False
    selector = getattr(JobScheduler, "job_selector", None)
    if selector is None:
        return False
    if not getattr(selector, GUARD_MARKER, False):
        JobScheduler.job_selector = _guarded(selector)
    return True
