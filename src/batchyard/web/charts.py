"""Charts drawn on the server as SVG: the day's budget gauge and the 30-day bars.

Every figure is also written as text beside the chart (status by text, not colour)."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape


def gauge(used: float, reserved: float, limit: float, label: str) -> Markup:
    """A horizontal bar: used, then reserved, then what is left, of the limit."""
    width, height = 400, 28
    limit = max(limit, 1e-9)
    used_w = min(width, width * used / limit)
    reserved_w = min(width - used_w, width * reserved / limit)
    return Markup(
        f'<svg class="gauge" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" aria-label="{escape(label)}">'
        f'<rect x="0" y="0" width="{width}" height="{height}" class="gauge-left"/>'
        f'<rect x="0" y="0" width="{used_w:.1f}" height="{height}" class="gauge-used"/>'
        f'<rect x="{used_w:.1f}" y="0" width="{reserved_w:.1f}" height="{height}" '
        f'class="gauge-reserved"/></svg>')


def bars(values: Sequence[float], labels: Sequence[str], title: str,
         unit: str = "") -> Markup:
    """A bar per day, with the largest value and each bar's figure as its tooltip."""
    width, height, pad = 600, 140, 20
    top = max(values, default=0) or 1
    step = (width - pad) / max(1, len(values))
    parts = [f'<svg class="bars" role="img" viewBox="0 0 {width} {height + pad}" '
             f'width="{width}" height="{height + pad}" aria-label="{escape(title)}">']
    for index, (value, label) in enumerate(zip(values, labels, strict=True)):
        bar = (height - pad) * value / top
        x = pad + index * step
        parts.append(f'<rect x="{x:.1f}" y="{height - bar:.1f}" width="{step * 0.8:.1f}" '
                     f'height="{bar:.1f}" class="bar"><title>{escape(label)}: '
                     f'{value:.3g}{escape(unit)}</title></rect>')
    parts.append(f'<text x="{pad}" y="12" class="axis">max {top:.3g}{escape(unit)}</text>')
    if labels:
        parts.append(f'<text x="{pad}" y="{height + 14}" class="axis">{escape(labels[0])}'
                     f'</text><text x="{width - 70}" y="{height + 14}" class="axis">'
                     f'{escape(labels[-1])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
