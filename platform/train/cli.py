"""One training run on Ray Train with MLflow tracking.

    python -m platform.train [--config experiments/X.yaml] [--resume PATH] [key=value ...]

Default: the tiny Co-DETR on the embedded synthetic dataset (generated on first use), a local
Ray cluster, MLflow's default store ``sqlite:///mlflow.db`` in the working directory. With
``RAY_ADDRESS`` set it joins that cluster instead (so it also works as a ``ray job submit``
entrypoint); with ``MLFLOW_TRACKING_URI`` set it logs there.

Resuming: run again with the same ``platform.run_name=NAME`` to continue from that run's
latest checkpoint (same Ray storage folder, same MLflow run), or pass ``--resume PATH`` (a
checkpoint folder or ``checkpoint.pt``) to start a new run from a checkpoint.
"""
from __future__ import annotations

import argparse
import os
import sys

from platform.core import console
from platform.core.cli_args import add_config_arguments, add_model_arguments
from platform.train.session import EXIT_FAILED, EXIT_USAGE, RunSession, TrackingUnavailable, UsageError

# the driver's own MLflow requests: a few quick retries, not MLflow's default of minutes per call
DRIVER_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m platform.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    add_config_arguments(parser)
    parser.add_argument("--resume", metavar="PATH", help="start from this checkpoint (folder or checkpoint.pt)")
    add_model_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the steps of :class:`platform.train.session.RunSession`."""
    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    for key, value in DRIVER_HTTP_ENV.items():
        os.environ.setdefault(key, value)
    console.set_verbose(args.verbose)
    console.configure_driver()
    try:
        session = RunSession.from_command_line(args, argv)
        session.announce()
        session.describe_data()
        session.open_mlflow_run()
    except UsageError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    except TrackingUnavailable as e:
        print(f"[platform] {e}", file=sys.stderr)
        return EXIT_FAILED
    outcome = session.train()
    session.print_summary()
    return outcome.code
