"""The loss plot shows every step and a moving average that follows the data."""

from __future__ import annotations

import numpy as np

from napari_msunet._napari._loss_plot import LossPlot


def test_axis_holds_every_loss_and_the_average_is_not_anchored_to_the_first(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.clear(total=20)
    # a healthy noisy run whose first batch happened to be easy (issue 15)
    rng = np.random.default_rng(0)
    losses = [0.21, *(1.0 - 0.03 * i + rng.normal(0, 0.2) for i in range(1, 20))]
    losses[5] = 1.6  # one hard batch
    for i, loss in enumerate(losses):
        plot.add(i + 1, float(loss), total=20)
    assert plot._top >= max(losses)  # no step clipped: the 1.6 is on the plot
    assert plot._top <= 1.5 * max(losses)
    # after ten steps the average reflects them, not the first one (plain EMA: 0.5)
    mean10 = float(np.mean(losses[:10]))
    assert abs(plot.smoothed[9] - mean10) < 0.15
    assert plot.smoothed[-1] < plot.smoothed[9]  # the trend (down) shows
    plot.show()
    qtbot.waitUntil(lambda: plot.redraws > 0, timeout=5000)


def test_log_scale_shows_the_small_losses_late_in_a_run(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.clear(total=30)
    for i in range(30):
        plot.add(i + 1, 1.5 * 0.85**i, total=30)  # 1.5 down to about 0.01
    plot.show()
    qtbot.waitUntil(lambda: plot.redraws > 0, timeout=5000)
    assert plot.axes.get_yscale() == "linear"
    assert plot.axes.get_ylim()[0] == 0
    plot.log_scale.setChecked(True)  # the user ticks the box
    painted = plot.redraws
    qtbot.waitUntil(lambda: plot.redraws > painted, timeout=5000)
    assert plot.axes.get_yscale() == "log"
    bottom, top = plot.axes.get_ylim()
    assert 0 < bottom <= min(plot.losses)
    assert top >= max(plot.losses)
    labels = [t.get_text() for t in plot._ylabels if t.get_visible()]
    assert len(labels) >= 2  # several decades labelled
    assert any(float(v) < 0.1 for v in labels)
    plot.log_scale.setChecked(False)
    qtbot.waitUntil(lambda: plot.axes.get_ylim()[0] == 0, timeout=5000)
    assert plot.axes.get_yscale() == "linear"
