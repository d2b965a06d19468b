"""What every command shares: config files and paths, argument parsing, the console, the local Ray
cluster, checkpoints in Ray storage and pictures.

- :mod:`.config_files`: a config name or path -> a validated ``Config`` with absolute paths; run names
- :mod:`.cli_args`: the arguments several commands take (``--config``, overrides, ``--register``, ``--verbose``)
- :mod:`.console`: what a run prints (Ray's and MLflow's chatter hidden unless ``--verbose``)
- :mod:`.loopback`: a local Ray cluster listens on 127.0.0.1 only (set before ``ray`` is imported)
- :mod:`.ray_cluster`: join ``RAY_ADDRESS`` or start a local cluster, with the repository as working dir
- :mod:`.checkpoints`: a run's checkpoints in Ray Train storage; the model of a checkpoint
- :mod:`.config_docs`: the reference of every config key, from the typed schema
- :mod:`.visualize`: loss curves and images with boxes drawn
- :mod:`.diagnostic_plots`: the evaluation diagnostics' figures (IoF-IoB curve, error breakdown, PR curves, confusion)

Nothing is imported here: ``python -m platform.train`` must set :mod:`.loopback` before anything
imports ``ray``.
"""
