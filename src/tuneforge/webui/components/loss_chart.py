"""The Train tab's loss chart as an inline SVG string (raw + smoothed loss, axes, legend).

Rendered by us rather than by `gr.LinePlot`: gradio 6's plot shows its axes but draws no lines when a
`gr.Timer` updates its value, so the live chart of a running job stayed empty. A pure function of the
logged points is also easy to test. The polylines carry `id`s and `data-points` for tests and scripts.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from types import MappingProxyType

from tuneforge.webui.i18n import text

# The chart's own words (the title is i18n's "loss_chart"); same (en, zh) layout as i18n.LABELS.
CHART_TEXT = MappingProxyType({
    "raw": ("raw", "原始值"),
    "smoothed": ("smoothed", "平滑值"),
    "step": ("step", "步数"),
    "empty": ("No loss logged yet: the curve appears after the first logging step.",
              "尚未记录损失：第一个日志步之后将显示曲线。"),
})

COLORS = MappingProxyType({"raw": "#93c5fd", "smoothed": "#1d4ed8"})
WIDTH, HEIGHT = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 40, 44  # margins: tick labels left and below, title and legend on top
MARKER_LIMIT = 60  # dots on the raw points while there are few of them (a single point has no line)


def chart_labels(lang: str) -> dict[str, str]:
    labels = {key: pair[1] if lang == "zh" else pair[0] for key, pair in CHART_TEXT.items()}
    labels["title"] = text("loss_chart", lang)
    return labels


def nice_ticks(low: float, high: float, count: int = 5, *, integer: bool = False) -> list[float]:
    """Round-numbered ticks (1, 2, 2.5 or 5 times a power of ten) inside [low, high], about `count` of them."""
    span = high - low
    if span <= 0:
        return [low]
    raw_step = span / max(count, 1)
    power = 10 ** math.floor(math.log10(raw_step))
    step = next((m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw_step), 10 * power)
    if integer:
        step = max(1, math.ceil(step))
    first = math.ceil(low / step - 1e-9) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value = first + len(ticks) * step
    return ticks


def _tick_text(value: float, step: float) -> str:
    """As many decimals as the tick step needs (0.25 -> 2, 2.5 -> 1, 5 -> 0), at most 6."""
    decimals = next((d for d in range(7) if abs(round(step, d) - step) <= 1e-9 * max(1.0, abs(step))), 6)
    return f"{value:.{decimals}f}"


def _padded(low: float, high: float, pad: float) -> tuple[float, float]:
    if high == low:  # a flat series: give it some room so it sits in the middle
        margin = abs(low) * 0.05 or 1.0
        return low - margin, high + margin
    margin = (high - low) * pad
    return low - margin, high + margin


def render_loss_svg(losses: list[tuple[int, float]], lang: str = "en",
                    labels: Mapping[str, str] | None = None) -> str:
    """SVG of the `(step, loss)` points: `#tf-loss-raw` and `#tf-loss-smoothed` polylines, or an empty state.

    Non-finite losses (a diverged run) are left out of both lines; `data-points` counts what is drawn.
    `labels` overrides the words of `lang` (keys of CHART_TEXT and "title").
    """
    words = {**chart_labels(lang), **(labels or {})}
    esc = {key: html.escape(str(value)) for key, value in words.items()}
    points = sorted((int(s), float(v)) for s, v in losses if math.isfinite(float(v)))
    head = (f'<svg id="tf-loss-svg" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'role="img" aria-label="{esc["title"]}" data-points="{len(points)}" '
            'style="width:100%;height:auto;font-family:sans-serif;font-size:12px">')
    parts = [head, f'<text x="{LEFT}" y="18" font-size="14" font-weight="bold" fill="#111827">{esc["title"]}</text>']
    if not points:
        parts.append(f'<text id="tf-loss-empty" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" '
                     f'fill="#6b7280">{esc["empty"]}</text></svg>')
        return "".join(parts)

    from tuneforge.utils.runlog import smooth

    steps = [s for s, _ in points]
    raw = [v for _, v in points]
    smoothed = smooth(raw)
    x_low, x_high = (steps[0], steps[-1]) if steps[-1] > steps[0] else (steps[0] - 1, steps[0] + 1)
    y_low, y_high = _padded(min(raw + smoothed), max(raw + smoothed), 0.05)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(step: float) -> float:
        return LEFT + (step - x_low) / (x_high - x_low) * plot_w

    def sy(value: float) -> float:
        return TOP + (y_high - value) / (y_high - y_low) * plot_h

    # axes, grid and tick labels
    bottom, right = TOP + plot_h, LEFT + plot_w
    parts.append(f'<g id="tf-loss-axes" stroke="#9ca3af" stroke-width="1">'
                 f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}"/>'
                 f'<line x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}"/></g>')
    y_ticks = nice_ticks(y_low, y_high, 5)
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else (y_high - y_low)
    for value in y_ticks:
        y = f"{sy(value):.2f}"
        parts.append(f'<line x1="{LEFT}" y1="{y}" x2="{right}" y2="{y}" stroke="#e5e7eb"/>'
                     f'<text class="tf-tick-y" x="{LEFT - 6}" y="{float(y) + 4:.2f}" text-anchor="end" fill="#374151">'
                     f'{_tick_text(value, y_step)}</text>')
    for step in nice_ticks(x_low, x_high, 6, integer=True):
        x = f"{sx(step):.2f}"
        parts.append(f'<line x1="{x}" y1="{bottom}" x2="{x}" y2="{bottom + 4}" stroke="#9ca3af"/>'
                     f'<text class="tf-tick-x" x="{x}" y="{bottom + 17}" text-anchor="middle" fill="#374151">'
                     f'{int(step)}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 6}" text-anchor="middle" fill="#374151">'
                 f'{esc["step"]}</text>')

    # the two lines, then dots on the raw points while they are few
    for key, values, width in (("raw", raw, 1.5), ("smoothed", smoothed, 2.5)):
        coords = " ".join(f"{sx(s):.2f},{sy(v):.2f}" for s, v in zip(steps, values))
        parts.append(f'<polyline id="tf-loss-{key}" class="tf-loss-line" data-points="{len(values)}" '
                     f'points="{coords}" fill="none" stroke="{COLORS[key]}" stroke-width="{width}" '
                     'stroke-linejoin="round" stroke-linecap="round"/>')
    if len(steps) <= MARKER_LIMIT:
        dots = "".join(f'<circle cx="{sx(s):.2f}" cy="{sy(v):.2f}" r="2.5"/>' for s, v in zip(steps, raw))
        parts.append(f'<g id="tf-loss-markers" fill="{COLORS["raw"]}">{dots}</g>')

    # legend, top right
    legend_x = right - 190
    for i, key in enumerate(("raw", "smoothed")):
        x = legend_x + i * 95
        parts.append(f'<g class="tf-loss-legend" data-series="{key}">'
                     f'<line x1="{x}" y1="14" x2="{x + 18}" y2="14" stroke="{COLORS[key]}" stroke-width="3"/>'
                     f'<text x="{x + 24}" y="18" fill="#374151">{esc[key]}</text></g>')
    parts.append("</svg>")
    return "".join(parts)
