"""Pictures of the evaluation diagnostics: the encoder's IoF-IoB curve (and, see
:mod:`platform.analysis.error_report`, the error analysis figures)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from platform.core.visualize import pyplot


def plot_iof_iob(curve: tuple[Sequence[float], Sequence[float], Sequence[float]], area: float | None = None,
                 title: str = ""):
    """Matplotlib figure: IoF against IoB as the threshold S sweeps [0, 1] (left), and both against S (right)."""
    thresholds, iof, iob = (np.asarray(x, dtype=float) for x in curve)
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    left.plot(iob, iof, marker=".", markersize=3, label="encoder" + (f" (area {area:.3f})" if area is not None else ""))
    left.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="no discrimination")
    left.set_xlabel("IoB(S): background pixels with D > S")
    left.set_ylabel("IoF(S): foreground pixels with D > S")
    left.set_xlim(0, 1)
    left.set_ylim(0, 1)
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    right.plot(thresholds, iof, label="IoF")
    right.plot(thresholds, iob, label="IoB")
    right.set_xlabel("threshold S")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
