"""The diagnostics' figures render from real analyses (hand-made detections) into PNG files."""
import numpy as np
from pycocotools.coco import COCO

from codetr.evaluation.diagnostics.errors import analyze_errors
from platform.core.diagnostic_plots import error_analysis_figures, plot_iof_iob
from platform.core.visualize import close_figure


def test_figures_render(tmp_path):
    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "width": 64, "height": 64}],
                    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
                    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "area": 400,
                                     "iscrowd": 0}]}
    coco.createIndex()
    analysis = analyze_errors(coco, [{"image_id": 1, "category_id": 2, "bbox": [0, 0, 20, 20], "score": 0.9}], [1])
    figures = error_analysis_figures(analysis, {"coco/APs": 0.1, "coco/APm": -1.0, "coco/AP/a": 0.0, "coco/AP/b": 0.5})
    t = np.linspace(0, 1, 101)
    figures["iof_iob.png"] = plot_iof_iob((t, 1 - t, (1 - t) ** 2), area=0.66)
    for name, fig in figures.items():
        fig.savefig(tmp_path / name)
        close_figure(fig)
        assert (tmp_path / name).stat().st_size > 5000, name
    assert analysis.counts["cls"] == 1
