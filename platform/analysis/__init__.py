"""What runs and sweeps tell: a checkpoint's metrics, a sweep's trials as rows, their statistics and
comparisons, the plots, the sweep's summary in its parent run, and the report beside the paper's tables.

- :mod:`.checkpoint_eval`: COCO metrics of a checkpoint (``python -m platform.evaluate``), its branches' too
- :mod:`.error_report`: a checkpoint's COCO error analysis, figures and MLflow logging (``python -m platform.analyze``)
- :mod:`.rows`: a sweep's trials read back from MLflow as :class:`.rows.TrialRow`, and their formatting
- :mod:`.stats`: means, t-intervals, paired differences, per-key effects
- :mod:`.comparisons`: a repeated sweep's configurations, baseline comparisons and tables
- :mod:`.plots`: the sweep's plots
- :mod:`.summary`: the summary artifacts of a sweep's parent run
- :mod:`.paper_ablations`, :mod:`.report`: the paper's ablation tables, and a sweep set beside them
"""
