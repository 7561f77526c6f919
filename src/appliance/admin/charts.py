"""Server-rendered inline SVG charts for the dashboard (no JavaScript).

The admin page's Content-Security-Policy forbids inline scripts and ``style`` attributes, so
charts are plain SVG with presentation attributes (``x``, ``y``, ``points``...) and CSS
classes (``series-0``, ``series-1``..., ``threshold``) styled by ``static/dashboard.css``.
Every chart carries a ``<title>`` per point for a hover tooltip and an ``aria-label``.
Labels are escaped (:func:`markupsafe.escape`); the returned :class:`markupsafe.Markup` is
safe to put in a Jinja2 template as it is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH = 640
HEIGHT = 200
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 8, 10, 24


@dataclass(frozen=True)
class Series:
    """One line or one stacked layer: ``values`` align with the chart's x labels.

    Attributes:
        name: Legend text.
        values: One value per bucket; ``None`` where there is no data (a gap).
    """

    name: str
    values: Sequence[float | None]


def nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value`` (1.0 for <= 0)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value * (1 - 1e-9):
            return float(step * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def bucket_label(start: float, bucket: str) -> str:
    """Short UTC label of a bucket start: ``14:00`` (hour), ``Mar 05`` (day, week)."""
    fmt = "%H:%M" if bucket == "hour" else "%b %d"
    return time.strftime(fmt, time.gmtime(start))


def _fmt(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value * 100:.1f}%"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:g}"


def _frame(
    labels: Sequence[str], y_max: float, unit: str, title: str
) -> tuple[list[str], Callable[[int], float], Callable[[float], float], float]:
    n = max(len(labels), 1)
    plot_w = WIDTH - _LEFT - _RIGHT
    plot_h = HEIGHT - _TOP - _BOTTOM
    step = plot_w / n

    def x(i: int) -> float:
        return _LEFT + step * (i + 0.5)

    def y(v: float) -> float:
        return _TOP + plot_h * (1 - min(max(v / y_max, 0.0), 1.0))

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for frac in (0.0, 0.5, 1.0):
        gy = y(y_max * frac)
        parts.append(
            f'<line class="grid" x1="{_LEFT}" y1="{gy:.1f}" x2="{WIDTH - _RIGHT}" y2="{gy:.1f}"/>'
        )
        parts.append(
            f'<text class="axis" x="{_LEFT - 4}" y="{gy + 4:.1f}" text-anchor="end">'
            f"{escape(_fmt(y_max * frac, unit))}</text>"
        )
    every = max(1, math.ceil(n / 8))
    for i, label in enumerate(labels):
        if i % every == 0:
            parts.append(
                f'<text class="axis" x="{x(i):.1f}" y="{HEIGHT - 6}" text-anchor="middle">'
                f"{escape(label)}</text>"
            )
    return parts, x, y, step


def line_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    unit: str = "",
    y_max: float | None = None,
    thresholds: Sequence[tuple[float, str]] = (),
) -> Markup:
    """A line chart, one polyline per series, gaps where a value is ``None``.

    Args:
        title: Accessible title.
        labels: One x label per bucket.
        series: The lines (classes ``series-0``, ``series-1``...).
        unit: ``"%"`` (values are fractions), ``"s"`` or ``""`` for the axis and tooltips.
        y_max: Top of the y axis; default :func:`nice_max` of the data and thresholds.
        thresholds: ``(value, label)`` horizontal dashed lines (class ``threshold``).

    Returns:
        The ``<svg>`` element.
    """
    data = [v for s in series for v in s.values if v is not None]
    top = y_max if y_max is not None else nice_max(max(data + [t for t, _ in thresholds] or [0]))
    parts, x, y, _ = _frame(labels, top, unit, title)
    for value, label in thresholds:
        ty = y(value)
        parts.append(
            f'<line class="threshold" x1="{_LEFT}" y1="{ty:.1f}" x2="{WIDTH - _RIGHT}" '
            f'y2="{ty:.1f}"><title>{escape(label)}: {escape(_fmt(value, unit))}</title></line>'
        )
    for k, s in enumerate(series):
        runs: list[list[tuple[float, float]]] = [[]]
        for i, v in enumerate(s.values):
            if v is None:
                runs.append([])
                continue
            runs[-1].append((x(i), y(v)))
            parts.append(
                f'<circle class="series-{k}" cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5">'
                f"<title>{escape(s.name)} {escape(labels[i] if i < len(labels) else '')}: "
                f"{escape(_fmt(v, unit))}</title></circle>"
            )
        for run in runs:
            if len(run) > 1:
                points = " ".join(f"{px:.1f},{py:.1f}" for px, py in run)
                parts.append(f'<polyline class="line series-{k}" points="{points}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def stacked_bars(
    title: str, labels: Sequence[str], layers: Sequence[Series], *, unit: str = "s"
) -> Markup:
    """Stacked bars: per bucket, each layer's value on top of the previous ones.

    ``None`` counts as 0 in the stack (a stage with no figure in that bucket).

    Returns:
        The ``<svg>`` element (bar classes ``series-0``, ``series-1``...).
    """
    totals = [
        sum(layer.values[i] or 0.0 for layer in layers if i < len(layer.values))
        for i in range(len(labels))
    ]
    top = nice_max(max(totals, default=0.0))
    parts, x, y, step = _frame(labels, top, unit, title)
    width = step * 0.7
    for i, label in enumerate(labels):
        base = 0.0
        for k, layer in enumerate(layers):
            v = layer.values[i] if i < len(layer.values) else None
            if not v:
                continue
            y0, y1 = y(base), y(base + v)
            parts.append(
                f'<rect class="series-{k}" x="{x(i) - width / 2:.1f}" y="{y1:.1f}" '
                f'width="{width:.1f}" height="{max(y0 - y1, 0.0):.1f}">'
                f"<title>{escape(layer.name)} {escape(label)}: {escape(_fmt(v, unit))}</title>"
                "</rect>"
            )
            base += v
    parts.append("</svg>")
    return Markup("".join(parts))


def legend(names: Sequence[str]) -> Markup:
    """An HTML legend list whose swatches use the same ``series-N`` classes."""
    items = "".join(
        f'<li><span class="swatch series-{k}"></span>{escape(name)}</li>'
        for k, name in enumerate(names)
    )
    return Markup(f'<ul class="legend">{items}</ul>')


def stage_bar(segments: Sequence[tuple[str, float | None]], scale_s: float) -> Markup:
    """One turn's stages as a horizontal stacked bar, ``scale_s`` seconds across.

    Args:
        segments: ``(stage name, seconds)`` in order; ``None`` or 0 is left out.
        scale_s: Seconds the full width stands for (e.g. the call's slowest turn).

    Returns:
        A small ``<svg>`` (classes ``series-N`` by segment position).
    """
    width, height = 320, 14
    scale = width / scale_s if scale_s > 0 else 0.0
    parts = [
        f'<svg class="stagebar" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" xmlns="http://www.w3.org/2000/svg">'
    ]
    x = 0.0
    for k, (name, value) in enumerate(segments):
        if not value or value <= 0:
            continue
        w = min(value * scale, width - x)
        parts.append(
            f'<rect class="series-{k}" x="{x:.1f}" y="0" width="{max(w, 0.0):.1f}" '
            f'height="{height}"><title>{escape(name)}: {escape(_fmt(value, "s"))}</title></rect>'
        )
        x += max(w, 0.0)
    parts.append("</svg>")
    return Markup("".join(parts))
