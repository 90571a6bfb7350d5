"""Gantt charts: written with the same mode as every other output, and the overall title clear of the panels'
titles and the legend clear of the time axes (issue 14)."""
from __future__ import annotations

import os
import stat

import matplotlib.pyplot as plt

from edgepool.atomic import atomic_path, write_text_atomic
from edgepool.plotting import draw_gantt, draw_pareto, draw_series, gantt_figure
from edgepool.report import Report, TimelineEvent


def report(source: str, devices=("laptop", "jetson", "pi", "phone")) -> Report:
    timeline = [TimelineEvent(device=d, kind=k, start=i * 0.3 + j * 0.1, end=i * 0.3 + j * 0.1 + 0.08)
                for i, d in enumerate(devices) for j, k in enumerate(("fwd", "bwd", "send", "allreduce"))]
    return Report(source=source, where="test", planner="hybrid", model="gpt2", cluster="home", throughput=45.97,
                  iteration_time_s=1.392, timeline=timeline)


def test_gantt_has_the_mode_of_the_other_outputs(tmp_path):
    old = os.umask(0o022)
    try:
        text = write_text_atomic(tmp_path / "report.json", "{}")
        png = draw_gantt([report("simulated"), report("measured")], tmp_path / "gantt.png", title="t")
        pareto = draw_pareto([(1, 2), (2, 3)], tmp_path / "pareto.png")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in (text, png, pareto)}
    assert set(modes.values()) == {0o644}, modes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gantt.png", "pareto.png", "report.json"]


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
    try:
        with atomic_path(tmp_path / "x.png") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    except RuntimeError:
        pass
    assert list(tmp_path.iterdir()) == []


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_gantt_title_and_legend_clear_of_the_panels():
    for n in (1, 2, 4):
        fig = gantt_figure([report("simulated"), report("measured")] * (n // 2) or [report("simulated")],
                           title="simulated vs measured timelines: hybrid | phone alone")
        try:
            fig.canvas.draw()
            renderer = fig.canvas.get_renderer()
            suptitle = fig._suptitle.get_window_extent(renderer)
            legend = fig.legends[0].get_window_extent(renderer)
            for ax in fig.axes:
                assert not overlaps(suptitle, ax.title.get_window_extent(renderer)), n
                assert not overlaps(legend, ax.xaxis.label.get_window_extent(renderer)), n
                assert not overlaps(legend, ax.get_window_extent(renderer)), n
        finally:
            plt.close(fig)


def test_series_and_a_given_pareto_front_are_written_like_the_other_outputs(tmp_path):
    """The CLI's throughput-over-time and mode-front plots go through the same atomic writer."""
    old = os.umask(0o022)
    try:
        series = draw_series({"replay": [(0.0, 80.0), (2.0, 32.0)], "checkpoint": [(0.0, 80.0), (2.0, 0.0)]},
                             tmp_path / "throughput.png", "time (s)", "samples/s", title="t")
        points = [(0.1 * i, 40.0 - i) for i in range(300)]
        front = draw_pareto(points, tmp_path / "front.png", front=[0, 299], highlight=5, highlight_label="chosen")
    finally:
        os.umask(old)
    assert {stat.S_IMODE(os.stat(p).st_mode) for p in (series, front)} == {0o644}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["front.png", "throughput.png"]


def test_pareto_front_matches_the_pairwise_definition():
    """The sort-and-sweep front equals 'no other point is at least as good on both axes' on random points with
    ties and repeats, for every direction of the two axes."""
    import random

    from edgepool.plotting import pareto_front

    rng = random.Random(0)
    for _ in range(500):
        points = [(rng.randint(0, 4), rng.randint(0, 4)) for _ in range(rng.randint(0, 10))]
        for minimize_x in (True, False):
            for maximize_y in (True, False):
                sx, sy = (1 if minimize_x else -1), (-1 if maximize_y else 1)
                expected = [i for i, (x, y) in enumerate(points)
                            if not any(sx * x2 <= sx * x and sy * y2 <= sy * y and (x2, y2) != (x, y)
                                       for x2, y2 in points)]
                assert pareto_front(points, minimize_x, maximize_y) == expected


def test_cdf_draws_one_curve_per_label(tmp_path):
    from edgepool.plotting import draw_cdf

    path = draw_cdf({"a": [1.0, 2.0, 3.0], "b": [0.5]}, tmp_path / "cdf.png", "seconds", unit=" s")
    assert path.is_file() and path.stat().st_size > 0
