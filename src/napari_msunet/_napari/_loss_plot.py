"""A small live loss plot for training runs, drawn with matplotlib inside a Qt widget.

Training yields a record per step, possibly dozens per second on a GPU. Drawing on every
record would spend the GUI thread on matplotlib, so records only append to lists and a timer
redraws at most a few times per second, and only when something changed (GUIDE: the GUI
thread only draws, never more than ~50 ms at a time).

Even one full matplotlib draw (ticks, tick labels, legend) costs 15-20 ms of CPU, and 100-200
ms of wall time on a 2-core machine busy training. So the plot never redraws fully while a run
goes on: the frame, axis names and legend are drawn once (and again only on a resize) and
cached; the grid lines and their labels, which change when the scale does, are drawn over that
cache into a second cache; each update only paints the two curves over it and blits the
result (a few ms).

A "Log scale" box under the plot switches the loss axis to powers of ten: a fine-tune's
losses fall from above 1 to a few hundredths, and on a linear axis the last half of the run is
a flat line on the floor.
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QVBoxLayout, QWidget

__all__ = ["LossPlot"]

#: Weight of the newest step in the smoothed curve (an exponential moving average, as
#: TensorBoard draws it): single steps are noisy with small batches.
SMOOTHING = 0.1

_N_YLABELS, _N_XLABELS = 7, 7


def _nice_top(v: float) -> float:
    """The first of 1, 1.5, 2, 3, 5, 7.5 (x 10^k) at or above ``v``: round axis tops."""
    k = 10 ** np.floor(np.log10(v))
    return float(next(m * k for m in (1, 1.5, 2, 3, 5, 7.5, 10) if m * k >= v))


def _nice_bottom(v: float) -> float:
    """The last of 1, 2, 5 (x 10^k) at or below ``v``: round bottoms for a log axis."""
    k = 10 ** np.floor(np.log10(v))
    return float(next(m * k for m in (5, 2, 1) if m * k <= v * (1 + 1e-9)))


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 0.01 or v == 0 else f"{v:.0e}"


class LossPlot(QWidget):
    """Training loss per step (thin) and its moving average (bold), redrawn on a timer.

    The x axis spans the planned steps of the run; the y axis runs from 0 to a little above
    the highest loss seen (every step visible; it only grows, so the scale seldom changes
    while the curve falls). The moving average is bias-corrected (as Adam corrects its
    moments): with the plain form, started at the first loss, that first value kept a third
    of the weight after ten steps, so a run whose first batch happened to be easy read as
    "it got worse" (issue 15: 0.21 -> 0.41 in a healthy 20-step run).

    Parameters
    ----------
    interval_ms
        Least time between two redraws.
    colors
        ``(background, text, raw line, smoothed line)``; defaults suit napari's dark theme.
    """

    def __init__(
        self,
        parent: QWidget | None = None,
        *,
        interval_ms: int = 300,
        colors: tuple[str, str, str, str] = ("#262930", "#f0f1f2", "#7f8a99", "#f0a030"),
    ) -> None:
        super().__init__(parent)
        background, text, raw, smooth = colors
        self.figure = Figure(figsize=(3.6, 2.6), dpi=100, facecolor=background)
        self.figure.subplots_adjust(left=0.06, right=0.97, bottom=0.2, top=0.96)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        ax = self.axes = self.figure.add_subplot()
        ax.set_facecolor(background)
        for side in ax.spines.values():
            side.set_color(text)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("step", color=text, fontsize=8, labelpad=12)
        ax.set_ylabel("loss", color=text, fontsize=8)
        ax.set_xlim(0, 10)
        ax.set_ylim(0, 1)
        # animated artists are left out of full draws and painted over the cached frame
        (self._raw,) = ax.plot([], [], color=raw, lw=0.8, label="loss", animated=True)
        (self._smooth,) = ax.plot(
            [], [], color=smooth, lw=1.8, label="moving average", animated=True
        )
        (self._grid,) = ax.plot([], [], color=text, lw=0.4, alpha=0.3, animated=True)
        label = {"color": text, "fontsize": 7, "animated": True}
        self._ylabels = [
            ax.text(0.01, 0, "", transform=ax.get_yaxis_transform(), va="bottom", **label)
            for _ in range(_N_YLABELS)
        ]
        self._xlabels = [
            ax.text(
                0,
                -0.03,
                "",
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="top",
                clip_on=False,
                **label,
            )
            for _ in range(_N_XLABELS)
        ]
        legend = ax.legend(
            handles=[self._raw, self._smooth], loc="upper right", fontsize=7, frameon=False
        )
        for t in legend.get_texts():
            t.set_color(text)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.redraws = 0  # updates painted
        self.full_draws = 0  # complete redraws (first show, resize)
        self._total: int | None = None
        self._top: float | None = None
        self._low: float | None = None  # least positive loss (the log axis's bottom)
        self._log = False
        self._ema = 0.0  # the moving average before its bias correction
        self._dirty = False
        self._frame = None  # cached full draw: frame, axis names, legend
        self._scaled = None  # the frame plus grid and labels for the current limits
        self._scale_key: tuple | None = None
        self.canvas.mpl_connect("draw_event", self._on_draw)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.log_scale = QCheckBox("Log scale")
        self.log_scale.setToolTip(
            "Loss axis in powers of ten: shows the small losses late in a run"
        )
        self.log_scale.toggled.connect(self.set_log)
        layout.addWidget(self.log_scale)
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._redraw)
        self._timer.start()

    def clear(self, total: int | None = None) -> None:
        """Forget the curve: a new run of ``total`` planned steps starts."""
        self.steps.clear()
        self.losses.clear()
        self.smoothed.clear()
        self._total = total
        self._top = None
        self._low = None
        self._ema = 0.0
        self._dirty = True

    def set_log(self, on: bool) -> None:
        """Draw the loss axis in powers of ten (``on``) or linearly from 0."""
        if bool(on) == self._log:
            return
        self._log = bool(on)
        self.axes.set_yscale("log" if self._log else "linear")
        self._scaled, self._scale_key = None, None
        self._dirty = True
        if self.log_scale.isChecked() != self._log:
            self.log_scale.setChecked(self._log)

    def _y_range(self) -> tuple[float, float]:
        top = self._top or 1.0
        if not self._log:
            return 0.0, top
        low = _nice_bottom(self._low) if self._low else top / 100
        return min(low, top / 10), top

    def add(self, step: int, loss: float, total: int | None = None) -> None:
        """Record one step (of ``total`` planned); drawn at the next tick of the timer."""
        self.steps.append(step)
        self.losses.append(loss)
        self._ema += SMOOTHING * (loss - self._ema)
        self.smoothed.append(self._ema / (1.0 - (1.0 - SMOOTHING) ** len(self.losses)))
        if total is not None:
            self._total = total
        if self._top is None or loss > self._top:
            self._top = _nice_top(max(1.1 * loss, 1e-6))
        if loss > 0 and (self._low is None or loss < self._low):
            self._low = max(loss, 1e-6)
        self._dirty = True

    def _on_draw(self, _event) -> None:
        # a full draw just happened (first show, resize): cache it and repaint the rest
        self._frame = self.canvas.copy_from_bbox(self.figure.bbox)
        self._scaled, self._scale_key = None, None
        self.full_draws += 1
        self._paint()

    def _paint_scale(self) -> None:
        """Grid lines and their labels for the current limits, cached over the frame."""
        ax = self.axes
        x1 = max(self._total or 0, self.steps[-1] if self.steps else 0, 10)
        bottom, top = self._y_range()
        ax.set_xlim(0, x1)
        ax.set_ylim(bottom, top)
        yticks = self._yticks(bottom, top)
        xticks = [v for v in MaxNLocator(nbins=4, integer=True).tick_values(0, x1) if v <= x1]
        gx, gy = [], []
        for v in yticks:
            gx += [0, x1, np.nan]
            gy += [v, v, np.nan]
        self._grid.set_data(gx, gy)
        for t, v in zip(self._ylabels, [*yticks, *[None] * _N_YLABELS], strict=False):
            t.set_visible(v is not None)
            if v is not None:
                t.set_text(_fmt(v))
                t.set_y(v)
        for t, v in zip(self._xlabels, [*xticks, *[None] * _N_XLABELS], strict=False):
            t.set_visible(v is not None)
            if v is not None:
                t.set_text(f"{int(v)}")
                t.set_x(v)
        self.canvas.restore_region(self._frame)
        for artist in (self._grid, *self._ylabels, *self._xlabels):
            if artist.get_visible():
                self.figure.draw_artist(artist)
        self._scaled = self.canvas.copy_from_bbox(self.figure.bbox)
        self._scale_key = self._key()

    def _yticks(self, bottom: float, top: float) -> list[float]:
        if not self._log:
            ticks = MaxNLocator(nbins=4).tick_values(bottom, top)
            return [float(v) for v in ticks if bottom < v < top]
        for subs in ((1.0, 2.0, 5.0), (1.0,)):  # 1-2-5 steps while they fit
            ticks = LogLocator(base=10, subs=subs).tick_values(bottom, top)
            inside = [float(v) for v in ticks if bottom < v < top]
            if len(inside) <= _N_YLABELS:
                return inside
        return inside[:: -(-len(inside) // _N_YLABELS)]

    def _key(self) -> tuple:
        x1 = max(self._total or 0, self.steps[-1] if self.steps else 0, 10)
        return (x1, self._log, *self._y_range())

    def _paint(self) -> None:
        key = self._key()
        if self._scaled is None or key != self._scale_key:
            self._paint_scale()
        self.canvas.restore_region(self._scaled)
        self._raw.set_data(self.steps, self.losses)
        self._smooth.set_data(self.steps, self.smoothed)
        self.axes.draw_artist(self._raw)
        self.axes.draw_artist(self._smooth)
        self.canvas.blit(self.figure.bbox)
        self.redraws += 1

    def _redraw(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        if self._frame is None:
            self.canvas.draw_idle()  # never drawn yet: _on_draw paints everything
        else:
            self._paint()
