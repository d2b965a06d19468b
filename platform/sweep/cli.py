"""A Ray Tune sweep of Co-DETR runs, compared in MLflow.

    python -m platform.sweep experiments/sweep_tiny.yaml [--resume] [key=value ...]
    ray job submit --working-dir . -- python -m platform.sweep experiments/sweep.yaml

The sweep file (see :mod:`platform.sweep.spec`) names a base config, a search space over dotted
config keys, the metric, a scheduler (ASHA or none) and per-trial resources; it is validated before
Ray starts. Each Tune trial runs :func:`run_trial`, which builds the single-run TorchTrainer of
``platform.train`` (Ray Train V2) for the trial's config with a ``TuneReportCallback``, so the
workers' per-epoch reports (``epoch``, ``coco/*``, ``train/loss``) reach Tune and its scheduler.

MLflow: one parent run per sweep (the sweep name), one child run per trial (tag
``mlflow.parentRunId``) with the params, metrics and artifacts of a single run; at the end the
parent gets the results table, plots and the best config (:mod:`platform.analysis.summary`).

``--resume`` continues an interrupted sweep of the same name (``Tuner.restore``): finished trials
are kept, unfinished ones continue from their latest checkpoint into the same child runs.
A trial whose process, worker or node is lost restarts from its latest checkpoint, up to
``max_failures`` times (sweep file, default 1); a trial that keeps failing is given up: the sweep is
INCOMPLETE (summary, parent run FAILED with tag ``sweep.incomplete``) and ``--resume --retry-failed``
runs exactly the given-up trials again, from their latest checkpoints, into their MLflow runs.

Repeats (``seeds`` / ``repeats`` in the sweep file) run every configuration once per seed
(``train.seed``); the summary then gives each configuration's mean and t-interval, the effect of
each swept value and paired comparisons with the ``baseline`` configuration
(:mod:`platform.analysis.stats`); ``python -m platform.report SWEEP`` sets them beside the paper's.

A trial with one worker (``trial_runner: auto``) trains inside its Tune trial's process, which Tune
reuses for the next trial (:mod:`platform.train.hosts`); with more workers (or ``trial_runner:
ray_train``) the trial runs a Ray Train ``TorchTrainer``.
"""
from __future__ import annotations

import argparse
import sys

from platform.core import console
from platform.core.cli_args import add_model_arguments
from platform.sweep.session import EXIT_OK, EXIT_USAGE, SweepSession, SweepUsageError, describe


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m platform.sweep", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("sweep_file", help="sweep YAML (e.g. experiments/sweep_tiny.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="sweep-file fields (num_samples=2, scheduler.type=none) or base config keys "
                             "(train.max_iters=10)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted sweep of this name")
    parser.add_argument("--retry-failed", action="store_true",
                        help="with --resume: run the trials the sweep gave up again (from their latest checkpoints)")
    parser.add_argument("--dry-run", action="store_true", help="validate the sweep file and print the plan")
    add_model_arguments(parser)   # --register NAME: the best trial's model; --verbose
    return parser.parse_intermixed_args(argv)



def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the steps of :class:`platform.sweep.session.SweepSession`."""
    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    console.set_verbose(args.verbose)
    console.configure_driver()
    try:
        session = SweepSession.from_command_line(args, argv)
        print(f"[sweep] {describe(session.spec)}", flush=True)
        if args.dry_run:
            print("\n".join(session.plan()))
            return EXIT_OK
        session.check_storage()
    except SweepUsageError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    session.describe_data()
    session.open_parent_run()
    session.run()
    session.print_summary()
    return session.code
