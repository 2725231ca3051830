"""Self-contained HTML report of a registration study (see :func:`build_report`).

Modules: ``builder`` (study tables -> sections -> page), ``plots`` (study-level figures),
``examples`` (per-pair image figures), ``markup`` (HTML fragments); ``template.html`` and
``style.css`` are package data inlined into the page.
"""

from registration_core.report.builder import build_report

__all__ = ["build_report"]
