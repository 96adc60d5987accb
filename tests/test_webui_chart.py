"""The Train tab's loss chart: an SVG string we render ourselves (gr.LinePlot drew no lines on timer updates)."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest

from tuneforge.utils.runlog import smooth
from tuneforge.webui.components.loss_chart import (BOTTOM, HEIGHT, LEFT, RIGHT, TOP, WIDTH, nice_ticks,
                                                   render_loss_svg)

SVG = "{http://www.w3.org/2000/svg}"
LOSSES = [(1, 2.30), (2, 2.10), (3, 2.20), (4, 1.90), (5, 1.70), (6, 1.75)]


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # also proves the string is well-formed XML (escaping included)


def line(root: ET.Element, series: str) -> ET.Element:
    found = root.findall(f".//{SVG}polyline[@id='tf-loss-{series}']")
    assert len(found) == 1, f"expected one #tf-loss-{series}"
    return found[0]


def coords(polyline: ET.Element) -> list[tuple[float, float]]:
    return [tuple(map(float, pair.split(","))) for pair in polyline.get("points").split()]


def texts(root: ET.Element, cls: str | None = None) -> list[str]:
    return [t.text for t in root.iter(f"{SVG}text") if cls is None or t.get("class") == cls]


def test_raw_and_smoothed_lines_have_one_point_per_logged_step():
    root = parse(render_loss_svg(LOSSES, "en"))
    assert root.get("id") == "tf-loss-svg" and root.get("viewBox") == f"0 0 {WIDTH} {HEIGHT}"
    assert root.get("data-points") == "6"
    for series in ("raw", "smoothed"):
        poly = line(root, series)
        assert poly.get("data-points") == "6"
        points = coords(poly)
        assert len(points) == 6
        for x, y in points:  # inside the plot area, hence inside the viewBox
            assert LEFT - 1e-6 <= x <= WIDTH - RIGHT + 1e-6
            assert TOP - 1e-6 <= y <= HEIGHT - BOTTOM + 1e-6
        xs = [x for x, _ in points]
        assert xs == sorted(xs) and xs[0] == pytest.approx(LEFT) and xs[-1] == pytest.approx(WIDTH - RIGHT)
    assert root.find(f".//{SVG}*[@id='tf-loss-empty']") is None
    assert len(root.findall(f".//{SVG}g[@id='tf-loss-markers']/{SVG}circle")) == 6


def test_coordinates_follow_the_values_and_the_smoothed_line_is_smooth():
    root = parse(render_loss_svg(LOSSES, "en"))
    raw, smoothed = coords(line(root, "raw")), coords(line(root, "smoothed"))
    # a higher loss is drawn higher up (smaller y), and the y scale is linear in the loss
    values = [v for _, v in LOSSES]
    for (_, y1), (_, y2), v1, v2 in zip(raw, raw[1:], values, values[1:]):
        assert (y1 < y2) == (v1 > v2)
    scale = (raw[0][1] - raw[3][1]) / (values[0] - values[3])
    assert (raw[1][1] - raw[4][1]) / (values[1] - values[4]) == pytest.approx(scale, rel=1e-3)
    # the smoothed line is tuneforge.train.callbacks.smooth of the same values, on the same scale
    expected = smooth(values)
    for (x_r, y_r), (x_s, y_s), v, s in zip(raw, smoothed, values, expected):
        assert x_s == pytest.approx(x_r)
        assert y_s - y_r == pytest.approx((s - v) * scale, abs=0.02)
    assert smoothed[0] == pytest.approx(raw[0])  # an EMA starts at the first value
    assert smoothed[-1] != pytest.approx(raw[-1])


def test_steps_are_placed_by_value_not_by_index():
    root = parse(render_loss_svg([(10, 1.0), (20, 0.9), (40, 0.8)], "en"))
    xs = [x for x, _ in coords(line(root, "raw"))]
    assert (xs[1] - xs[0]) * 2 == pytest.approx(xs[2] - xs[1], abs=0.02)
    assert texts(root, "tf-tick-x") == ["10", "15", "20", "25", "30", "35", "40"]


def test_axes_ticks_and_legend():
    root = parse(render_loss_svg(LOSSES, "en"))
    assert texts(root, "tf-tick-x") == ["1", "2", "3", "4", "5", "6"]
    # loss 1.70..2.30 padded by 5% = 1.67..2.33; span / 5 = 0.132 -> a tick every 0.2
    assert texts(root, "tf-tick-y") == ["1.8", "2.0", "2.2"]
    legend = {g.get("data-series"): g.find(f"{SVG}text").text for g in root.iter(f"{SVG}g")
              if g.get("class") == "tf-loss-legend"}
    assert legend == {"raw": "raw", "smoothed": "smoothed"}
    assert "Loss" in texts(root) and "step" in texts(root)


def test_chinese_labels():
    root = parse(render_loss_svg(LOSSES, "zh"))
    legend = [g.find(f"{SVG}text").text for g in root.iter(f"{SVG}g") if g.get("class") == "tf-loss-legend"]
    assert legend == ["原始值", "平滑值"]
    assert "损失" in texts(root) and "步数" in texts(root)


def test_empty_state():
    for lang, expected in (("en", "No loss logged yet"), ("zh", "尚未记录损失")):
        svg = render_loss_svg([], lang)
        root = parse(svg)
        assert root.get("data-points") == "0"
        assert root.findall(f".//{SVG}polyline") == []
        empty = root.find(f".//{SVG}text[@id='tf-loss-empty']")
        assert empty is not None and empty.text.startswith(expected)


def test_labels_are_html_escaped():
    evil = {"raw": "<b>raw & co</b>", "smoothed": 'sm"oo"th', "title": "<script>alert(1)</script>",
            "empty": "a < b"}
    svg = render_loss_svg(LOSSES, "en", labels=evil)
    assert "<script>" not in svg and "<b>" not in svg
    assert "&lt;b&gt;raw &amp; co&lt;/b&gt;" in svg and "sm&quot;oo&quot;th" in svg
    assert 'aria-label="&lt;script&gt;alert(1)&lt;/script&gt;"' in svg
    root = parse(svg)
    assert "<b>raw & co</b>" in texts(root) and "<script>alert(1)</script>" in texts(root)
    assert parse(render_loss_svg([], "en", labels=evil)).find(f".//{SVG}text[@id='tf-loss-empty']").text == "a < b"


def test_single_point_flat_series_and_non_finite_losses():
    root = parse(render_loss_svg([(3, 0.5)], "en"))
    ((x, y),) = coords(line(root, "raw"))
    assert x == pytest.approx(LEFT + (WIDTH - LEFT - RIGHT) / 2)  # one step sits in the middle
    assert y == pytest.approx(TOP + (HEIGHT - TOP - BOTTOM) / 2)  # and so does a flat loss
    assert texts(root, "tf-tick-x") == ["2", "3", "4"]

    flat = parse(render_loss_svg([(1, 0.0), (2, 0.0)], "en"))
    assert {round(y, 2) for _, y in coords(line(flat, "raw"))} == {TOP + (HEIGHT - TOP - BOTTOM) / 2}

    # a diverged run: nan / inf are left out instead of breaking the scale; data-points counts what is drawn
    root = parse(render_loss_svg([(1, 2.0), (2, math.nan), (3, 1.5), (4, math.inf)], "en"))
    assert line(root, "raw").get("data-points") == "2" and line(root, "smoothed").get("data-points") == "2"
    assert all(math.isfinite(v) for xy in coords(line(root, "smoothed")) for v in xy)


def test_out_of_order_points_are_drawn_by_step():
    root = parse(render_loss_svg([(3, 1.0), (1, 3.0), (2, 2.0)], "en"))
    points = coords(line(root, "raw"))
    assert [x for x, _ in points] == sorted(x for x, _ in points)
    assert points[0][1] < points[1][1] < points[2][1]  # step 1 has the highest loss: drawn highest


def test_many_points_drop_the_markers_but_keep_every_point():
    losses = [(i, 3.0 / i) for i in range(1, 501)]
    svg = render_loss_svg(losses, "en")
    root = parse(svg)
    assert line(root, "raw").get("data-points") == "500" and len(coords(line(root, "raw"))) == 500
    assert root.find(f".//{SVG}g[@id='tf-loss-markers']") is None
    assert texts(root, "tf-tick-x") == ["100", "200", "300", "400", "500"]


def test_nice_ticks():
    assert nice_ticks(1.93, 2.31) == [2.0, 2.1, 2.2, 2.3]
    assert nice_ticks(1, 4, 6, integer=True) == [1, 2, 3, 4]
    assert nice_ticks(0, 1000, 5, integer=True) == [0, 200, 400, 600, 800, 1000]
    assert nice_ticks(-0.5, 0.5, 4) == [-0.5, -0.25, 0.0, 0.25, 0.5]
    assert nice_ticks(2.0, 2.0) == [2.0]


def test_polyline_ids_are_what_the_browser_test_reads():
    svg = render_loss_svg(LOSSES, "en")
    assert re.search(r'<polyline id="tf-loss-raw" [^>]*data-points="6"', svg)
    assert re.search(r'<polyline id="tf-loss-smoothed" [^>]*data-points="6"', svg)
