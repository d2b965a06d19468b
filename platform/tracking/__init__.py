"""MLflow: where runs go and how they are created, logged, closed and found again.

- :mod:`.mlflow_runs`: the tracking URI, experiments, a run's start / reopen / end, :class:`RunLogger`
- :mod:`.spool`: logging that survives the tracking server going away (bounded retries, a local spool)
- :mod:`.source`: where a run came from (git commit, command line, user)
- :mod:`.datasets`: the training and validation sets as dataset inputs
- :mod:`.system_metrics`: MLflow's system metrics, sampled on every node that trains
- :mod:`.model_logging`: the deployable model as a LoggedModel (pyfunc), optionally registered
- :mod:`.driver_tags`, :mod:`.orphans`: which process drives a run; runs whose driver is gone
- :mod:`.sweep_runs`: a sweep's parent run and one child run per trial
"""
