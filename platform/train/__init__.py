"""One training run: the driver's steps, the Ray Train trainer and the per-worker loop.

- :mod:`.cli`: ``python -m platform.train`` (arguments -> :class:`.session.RunSession`)
- :mod:`.session`: the driver's steps in order: config, data, MLflow run, trainer, model, end, summary
- :mod:`.records`: what a run records at its start and end (data, params, config, the model); sweeps reuse it
- :mod:`.trainer`: the Ray Train ``TorchTrainer`` of a run and fitting it interruptibly
- :mod:`.rendezvous`: the workers' torch.distributed rendezvous, on 127.0.0.1 for a local cluster
- :mod:`.worker`: the per-worker training function (datasets, model, checkpoint, :class:`codetr.engine.TrainLoop`)
- :mod:`.reporter`: the worker's hooks: MLflow metrics and artifacts, progress lines, Ray reports
- :mod:`.hosts`: where a worker gets its rank, device, checkpoint and report (Ray Train or a Tune trial)
- :mod:`.failures`: why a run failed, in one line; what a failed resume must not change
- :mod:`.summary`: the lines printed at the end

Nothing is imported here (``python -m platform.train`` sets the loopback switch before ``ray`` is imported).
"""
