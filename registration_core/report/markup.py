"""HTML fragments of the report: escaped tables, embedded figures, notes.

Everything is static HTML: figures are PNG data URIs, no script, no external resource.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from html import escape

import pandas as pd


def cell(value: object) -> str:
    """One table cell's text: floats with 4 significant digits, NaN/None as an en dash, bools yes/no."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return escape(str(value))


LONG_CELL = 60


def _td(value: object, numeric: bool) -> str:
    """One ``<td>`` with its alignment / wrapping class."""
    text = cell(value)
    css = " class=num" if numeric else (" class=long" if len(text) > LONG_CELL else "")
    return f"<td{css}>{text}</td>"


def table(
    frame: pd.DataFrame,
    highlight: Sequence[bool] | None = None,
    headers: Sequence[str] | None = None,
    mark: str = "best",
) -> str:
    """``frame`` (index ignored) as an HTML table; rows where ``highlight`` is True get class ``mark``.

    Numeric columns are right-aligned (class ``num``); cells longer than :data:`LONG_CELL`
    characters may wrap (class ``long``), others stay on one line. ``headers`` replaces the
    column names.
    """
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]) for c in frame]
    names = headers if headers is not None else [str(c) for c in frame.columns]
    head = "".join(f'<th{" class=num" if n else ""}>{escape(h)}</th>' for h, n in zip(names, numeric, strict=True))
    marks = list(highlight) if highlight is not None else [False] * len(frame)
    rows = []
    for marked, values in zip(marks, frame.itertuples(index=False), strict=True):
        cells = "".join(_td(v.item() if hasattr(v, "item") else v, n) for v, n in zip(values, numeric, strict=True))
        rows.append(f"<tr class={mark}>{cells}</tr>" if marked else f"<tr>{cells}</tr>")
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def figure(png: bytes, caption: str) -> str:
    """An embedded PNG (base64 data URI) with its caption (also the alt text)."""
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{escape(caption)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def note(text: str, kind: str = "info") -> str:
    """A highlighted paragraph (``kind``: info or warning)."""
    return f'<p class="note {kind}">{escape(text)}</p>'


def paragraph(text: str) -> str:
    """An escaped paragraph."""
    return f"<p>{escape(text)}</p>"
