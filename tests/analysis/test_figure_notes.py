"""A figure's note stays on the page and clear of the axes, however long it is."""

from __future__ import annotations

from unittest import mock

from lnsub.analysis import figures

NOTE = ("bands: ±1 std over seeds; solid: IMP round (head carried over), dash-dot: the mask trained from θ0 with a "
        "fresh head; dotted: dense score, dashed: the winning-ticket threshold")


def test_a_long_note_is_wrapped_inside_the_figure_and_below_the_axis_label(tmp_path):
    drawn = {}
    real = figures.save_png

    def keep(fig, path, **kw):
        drawn["fig"] = fig
        return real(fig, path, **kw)

    with mock.patch.object(figures, "save_png", keep):
        figures.line_plot({"a": ([0, 0.5], [0.8, 0.9], {})}, "sparsity", "accuracy", "t", tmp_path / "f.png",
                          ylim=None, note=NOTE)
    fig = drawn["fig"]
    renderer = fig.canvas.get_renderer()
    note = next(t for t in fig.texts if "winning-ticket" in t.get_text())
    box = note.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width  # nothing runs off the right edge
    label = fig.axes[0].xaxis.label.get_window_extent(renderer)
    assert box.y1 <= label.y0  # the note sits below the x-axis label, not across it
    assert (tmp_path / "f.png").stat().st_size > 1000
