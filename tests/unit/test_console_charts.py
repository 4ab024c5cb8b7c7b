"""The console's server-drawn SVG charts: accessible, escaped, well-formed,
and honest about missing values."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from salus.console.charts import Bar, Series, bar_chart, format_number, line_chart, nice_scale

SVG = "{http://www.w3.org/2000/svg}"


def _parse(markup: str) -> ET.Element:
    return ET.fromstring(str(markup))  # noqa: S314 - our own output


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        (7, (8.0, 2.0)),
        (100, (100.0, 20.0)),
        (0.37, (0.4, 0.1)),
        (1234, (1250.0, 250.0)),
        (0, (1.0, 0.2)),
    ],
)
def test_nice_scale_covers_the_top_with_round_steps(
    top: float, expected: tuple[float, float]
) -> None:
    maximum, step = nice_scale(top)
    assert (round(maximum, 6), round(step, 6)) == expected
    assert maximum >= top


def test_format_number() -> None:
    assert format_number(7.0) == "7"
    assert format_number(1234) == "1,234"
    assert format_number(89.6774) == "89.7"
    assert format_number(None) == ""
    assert format_number(1234.56, locale="vi") == "1.234,6"
    assert format_number(3.5, locale="fr") == "3,5"


def test_bar_chart_is_labelled_and_bars_are_proportional() -> None:
    svg = _parse(
        bar_chart(
            "c1",
            "Admissions <October>",
            "Admissions per hospital",
            [
                Bar("Bệnh viện A", 8.0, highlight=True),
                Bar("병원 B", 4.0),
                Bar("C & D", None, "suppressed"),
            ],
            unit="%",
        )
    )
    assert svg.get("role") == "img"
    assert svg.get("aria-labelledby") == "c1-t c1-d"
    assert svg.find(f"{SVG}title").text == "Admissions <October>"  # escaped, then parsed back
    assert svg.find(f"{SVG}desc").text == "Admissions per hospital"
    rects = svg.findall(f"{SVG}rect")
    assert len(rects) == 2  # the missing value has no bar, not a zero-length one
    widths = [float(r.get("width")) for r in rects]
    assert widths[0] == pytest.approx(2 * widths[1])
    assert "own" in rects[0].get("class")
    assert rects[0].find(f"{SVG}title").text == "Bệnh viện A: 8 %"
    texts = [t.text for t in svg.iter(f"{SVG}text")]
    assert "suppressed" in texts and "C & D" in texts and "병원 B" in texts


def test_line_chart_has_gaps_for_missing_values_and_a_legend() -> None:
    svg = _parse(
        line_chart(
            "c2",
            "Bed occupancy",
            "Per month",
            ["2026-08", "2026-09", "2026-10", "2026-11"],
            [
                Series("Network", [80.0, 82.5, None, 90.0]),
                Series("<script>", [70.0, 71.0, 72.0, 73.0]),
            ],
            unit="%",
        )
    )
    lines = svg.findall(f"{SVG}polyline")
    # the network's gap splits it: one run of two points (the lone last point has a marker only)
    assert [len(p.get("points").split()) for p in lines] == [2, 4]
    tips = [t.text for t in svg.iter(f"{SVG}title")]
    assert "Network, 2026-09: 82.5 %" in tips
    assert not any("2026-10" in (t or "") and "Network" in (t or "") for t in tips)
    assert "<script>" in [t.text for t in svg.iter(f"{SVG}text")]  # text, not markup
    assert "<script>" not in str(
        line_chart("c3", "t", "d", ["2026-10"], [Series("<script>", [1.0])])
    )


def test_empty_charts_still_render() -> None:
    assert _parse(bar_chart("e1", "t", "d", [])).get("role") == "img"
    assert _parse(line_chart("e2", "t", "d", [], [])).get("role") == "img"
