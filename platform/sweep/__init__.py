"""A Ray Tune sweep of Co-DETR runs, compared in MLflow.

- :mod:`.cli`: ``python -m platform.sweep`` (arguments -> :class:`.session.SweepSession`)
- :mod:`.session`: the driver's steps in order: sweep file, storage, data, parent run, Tune, summary, model
- :mod:`.spec`: the sweep file, read and validated before Ray starts (search space, seeds, baseline)
- :mod:`.naming`: a trial's label, folder name, configuration id and seed
- :mod:`.trial`: one trial: its config, child run and training (Ray Train, or inline in the trial process)
- :mod:`.tuner`: the Tune ``Tuner``: search space, scheduler, search algorithm, restore
- :mod:`.run_status`: the Tune callback that closes each trial's child run truthfully
- :mod:`.resources`: the Tune callback that gives an ended trial's CPUs / GPUs back

The statistics and the summary of a sweep are in :mod:`platform.analysis`. Nothing is imported here
(``python -m platform.sweep`` sets the loopback switch before ``ray`` is imported).
"""
