"""SVG charts drawn on the server (ADR 15: no chart library, no CDN).

Two kinds, enough for the dashboards: a horizontal :func:`bar_chart` (one
value per hospital) and a :func:`line_chart` (values over months, one line per
series). Both return an ``<svg role="img">`` element as
:class:`markupsafe.Markup`, labelled by its own ``<title>`` and ``<desc>``
(WAI-ARIA Graphics Module, ``role="img"`` with ``aria-labelledby``; SVG 1.1
§5.4 "The 'desc' and 'title' elements"), with a ``<title>`` on every bar and
point for the pointer. Pages always put a table with the same numbers next to
a chart: the chart is a picture of the table, not its only carrier.

A missing value (``None``: suppressed or not computed) is never drawn as
zero: a bar shows the ``missing`` text instead, a line has a gap.
Every text is escaped; sizes are in user units with a ``viewBox`` so the
chart scales to its container (``width: 100%`` in ``dashboards.css``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from babel.numbers import format_decimal
from markupsafe import Markup, escape

from salus.console import i18n

__all__ = ["PALETTE", "Bar", "Series", "bar_chart", "format_number", "line_chart", "nice_scale"]

#: Colours with at least 3:1 contrast on white (WCAG 2.1 §1.4.11), told apart
#: by dash pattern and marker shape too (never by colour alone, §1.4.1).
PALETTE = ("#1f5fa8", "#b3541e", "#2e7d32", "#6a3d9a", "#8a6d00", "#c2185b", "#00796b", "#5d4037")
_DASHES = ("", "6 3", "2 3", "8 3 2 3", "1 2", "10 4")
_MARKERS = ("circle", "square", "diamond", "triangle")


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar: ``label`` (a hospital), ``value`` (None: ``note`` is shown)."""

    label: str
    value: float | None
    note: str = ""
    highlight: bool = False


@dataclass(frozen=True, slots=True)
class Series:
    """One line: ``values`` line up with the chart's ``periods`` (None: a gap)."""

    name: str
    values: Sequence[float | None]


def format_number(value: float | None, decimals: int = 1, locale: str | None = None) -> str:
    """A figure as pages show it, in the page's language (CLDR number symbols:
    ``1,234.5`` in English, ``1.234,5`` in Vietnamese): integers without
    decimals, others rounded to ``decimals``."""
    if value is None:
        return ""
    where = locale or i18n.current_locale()
    if float(value).is_integer():
        return format_decimal(int(value), format="#,##0", locale=where)
    return format_decimal(value, format="#,##0." + "0" * decimals, locale=where)


def nice_scale(top: float, ticks: int = 5) -> tuple[float, float]:
    """(axis maximum, tick step) with steps of 1, 2, 2.5 or 5 x 10^k covering ``top``."""
    if top <= 0 or not math.isfinite(top):
        return 1.0, 0.2
    rough = top / ticks
    power = 10 ** math.floor(math.log10(rough))
    for factor in (1, 2, 2.5, 5, 10):
        step = factor * power
        if step * ticks >= top:
            break
    return step * math.ceil(top / step - 1e-9), step


def _ticks(maximum: float, step: float) -> list[float]:
    count = round(maximum / step)
    return [round(i * step, 10) for i in range(count + 1)]


def _open(chart_id: str, width: int, height: int, title: str, desc: str, css: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {css}" id="{escape(chart_id)}" '
        f'viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="{escape(chart_id)}-t {escape(chart_id)}-d">',
        f'<title id="{escape(chart_id)}-t">{escape(title)}</title>',
        f'<desc id="{escape(chart_id)}-d">{escape(desc)}</desc>',
    ]


def bar_chart(
    chart_id: str,
    title: str,
    desc: str,
    bars: Sequence[Bar],
    *,
    unit: str = "",
    missing: str = "no value",
    width: int = 720,
) -> Markup:
    """Horizontal bars, one row per :class:`Bar`, with a value axis from 0."""
    label_w, right, top, row_h, axis_h = 190, 90, 10, 30, 28
    plot_w = width - label_w - right
    height = top + row_h * max(1, len(bars)) + axis_h
    highest = max((b.value for b in bars if b.value is not None), default=0.0)
    maximum, step = nice_scale(max(highest, 0.0))
    out = _open(chart_id, width, height, title, desc, "bars")
    plot_bottom = top + row_h * max(1, len(bars))
    for tick in _ticks(maximum, step):
        x = label_w + plot_w * tick / maximum
        out.append(
            f'<line class="grid" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{plot_bottom}"/>'
            f'<text class="tick" x="{x:.1f}" y="{plot_bottom + 18}" text-anchor="middle">'
            f"{escape(format_number(tick, 2))}</text>"
        )
    for index, bar in enumerate(bars):
        y = top + row_h * index
        middle = y + row_h / 2
        name = bar.label if len(bar.label) <= 26 else bar.label[:25] + "…"
        out.append(
            f'<text class="label" x="{label_w - 8}" y="{middle + 4:.1f}" text-anchor="end">'
            f"{escape(name)}</text>"
        )
        if bar.value is None:
            out.append(
                f'<text class="missing" x="{label_w + 6}" y="{middle + 4:.1f}">'
                f"{escape(bar.note or missing)}</text>"
            )
            continue
        length = plot_w * max(bar.value, 0.0) / maximum
        shown = format_number(bar.value) + (f" {unit}" if unit else "")
        css = "bar own" if bar.highlight else "bar"
        out.append(
            f'<rect class="{css}" x="{label_w}" y="{y + 5}" width="{length:.1f}" '
            f'height="{row_h - 10}"><title>{escape(bar.label)}: {escape(shown)}</title></rect>'
            f'<text class="value" x="{label_w + length + 6:.1f}" y="{middle + 4:.1f}">'
            f"{escape(shown)}</text>"
        )
    out.append(f'<line class="axis" x1="{label_w}" y1="{top}" x2="{label_w}" y2="{plot_bottom}"/>')
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 - every text above is escaped


def _marker(shape: str, x: float, y: float, colour: str, tip: str) -> str:
    tip_el = f"<title>{escape(tip)}</title>"
    if shape == "square":
        return (
            f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="{colour}">'
            f"{tip_el}</rect>"
        )
    if shape == "diamond":
        points = f"{x:.1f},{y - 5:.1f} {x + 5:.1f},{y:.1f} {x:.1f},{y + 5:.1f} {x - 5:.1f},{y:.1f}"
        return f'<polygon points="{points}" fill="{colour}">{tip_el}</polygon>'
    if shape == "triangle":
        points = f"{x:.1f},{y - 5:.1f} {x + 5:.1f},{y + 4:.1f} {x - 5:.1f},{y + 4:.1f}"
        return f'<polygon points="{points}" fill="{colour}">{tip_el}</polygon>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}">{tip_el}</circle>'


def line_chart(
    chart_id: str,
    title: str,
    desc: str,
    periods: Sequence[str],
    series: Sequence[Series],
    *,
    unit: str = "",
    width: int = 720,
    height: int = 300,
) -> Markup:
    """One line per :class:`Series` over ``periods`` (months), a legend below."""
    left, right, top = 64, 24, 12
    legend_rows = math.ceil(len(series) / 3) if series else 0
    bottom = 34 + 22 * legend_rows
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for s in series for v in s.values if v is not None]
    maximum, step = nice_scale(max(values, default=0.0))
    out = _open(chart_id, width, height, title, desc, "lines")
    for tick in _ticks(maximum, step):
        y = top + plot_h - plot_h * tick / maximum
        out.append(
            f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(format_number(tick, 2))}</text>"
        )
    count = len(periods)

    def x_of(index: int) -> float:
        return left + (plot_w / 2 if count == 1 else plot_w * index / (count - 1))

    every = max(1, math.ceil(count / 12))
    for index, period in enumerate(periods):
        if index % every == 0 or index == count - 1:
            out.append(
                f'<text class="tick" x="{x_of(index):.1f}" y="{top + plot_h + 18}" '
                f'text-anchor="middle">{escape(period)}</text>'
            )
    out.append(
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" '
        f'y2="{top + plot_h}"/>'
    )
    for number, line in enumerate(series):
        colour = PALETTE[number % len(PALETTE)]
        dash = _DASHES[number % len(_DASHES)]
        shape = _MARKERS[number % len(_MARKERS)]
        runs: list[list[tuple[float, float]]] = [[]]
        markers = []
        for index, value in enumerate(line.values[:count]):
            if value is None:
                runs.append([])
                continue
            x = x_of(index)
            y = top + plot_h - plot_h * max(value, 0.0) / maximum
            runs[-1].append((x, y))
            shown = format_number(value) + (f" {unit}" if unit else "")
            markers.append(_marker(shape, x, y, colour, f"{line.name}, {periods[index]}: {shown}"))
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        for run in runs:
            if len(run) > 1:
                points = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
                out.append(
                    f'<polyline class="line" points="{points}" stroke="{colour}"{dash_attr}/>'
                )
        out.extend(markers)
        lx = left + (number % 3) * (plot_w / 3)
        ly = top + plot_h + 36 + 22 * (number // 3)
        name = line.name if len(line.name) <= 28 else line.name[:27] + "…"
        out.append(
            f'<line class="line" x1="{lx:.1f}" y1="{ly - 4}" x2="{lx + 26:.1f}" y2="{ly - 4}" '
            f'stroke="{colour}"{dash_attr}/>'
            f"{_marker(shape, lx + 13, ly - 4, colour, line.name)}"
            f'<text class="legend" x="{lx + 32:.1f}" y="{ly}">{escape(name)}</text>'
        )
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 - every text above is escaped
