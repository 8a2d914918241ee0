"""The endpoint health chart: attempts per hour by outcome, as inline SVG drawn on the server."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from markupsafe import Markup

from outbox.db.dashboard import Hour

HOURS = 24
BAR = 6  # width of one hour's bar, gap included
HEIGHT = 32


@dataclass(frozen=True)
class Bar:
    """One hour's stacked bar, in SVG units."""

    x: int
    ok_height: float
    failed_height: float
    ok: int
    failed: int


def bars(hours: Iterable[Hour]) -> list[Bar]:
    """24 bars, oldest first, scaled so the busiest hour fills the height."""
    counts = dict.fromkeys(range(HOURS), (0, 0))
    for hour in hours:
        if 0 <= hour.hour < HOURS:
            ok, failed = counts[hour.hour]
            counts[hour.hour] = (ok + hour.ok, failed + hour.failed_attempts)
    peak = max((ok + failed for ok, failed in counts.values()), default=0) or 1
    return [
        Bar(h * BAR, ok * HEIGHT / peak, failed * HEIGHT / peak, ok, failed)
        for h, (ok, failed) in sorted(counts.items())
    ]


def svg(hours: Iterable[Hour]) -> Markup:
    """The chart as an <svg> element (classes only: the page's CSP allows no inline style)."""
    parts = [
        f'<svg class="chart" viewBox="0 0 {HOURS * BAR} {HEIGHT}" width="{HOURS * BAR * 2}" '
        f'height="{HEIGHT * 2}" role="img" aria-label="attempts per hour, last 24 hours">'
    ]
    for bar in bars(hours):
        top = HEIGHT - bar.ok_height - bar.failed_height
        parts.append(
            f"<g><title>{bar.ok} ok, {bar.failed} failed</title>"
            f'<rect class="failed" x="{bar.x}" y="{top:.2f}" width="{BAR - 1}" '
            f'height="{bar.failed_height:.2f}"/>'
            f'<rect class="ok" x="{bar.x}" y="{top + bar.failed_height:.2f}" width="{BAR - 1}" '
            f'height="{bar.ok_height:.2f}"/></g>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - numbers only, built here
