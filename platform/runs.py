"""Runs whose driver is gone: list them, close them, resume them; upload a spool.

    python -m platform.runs [list] [--all]               RUNNING runs whose driver process is gone
    python -m platform.runs close RUN [RUN ...]          mark them FAILED, with a tag saying why
    python -m platform.runs resume RUN                   print the command that continues RUN
    python -m platform.runs upload SPOOL                 send a spool of MLflow calls (see platform.tracking.spool)
    python -m platform.runs log-model RUN CHECKPOINT [--register NAME]
                                                         log a checkpoint's deployable model to RUN (what a
                                                         run does at its end; for one that ended while
                                                         MLflow was unreachable)

RUN is an MLflow run id or a ``platform.run_name``. The tracking URI is ``--tracking-uri``, else
``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory (as platform.train).

``python -m platform.train`` tags its MLflow run with the driver's host, pid and process start
time. A run is *orphaned* when it is RUNNING but that process no longer exists on this host
(``kill -9``, a crashed laptop). A driver on another host cannot be checked from here: such runs
show as ``unknown`` (``--all`` lists them).
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from platform.tracking.driver_tags import DRIVER_HOST, DRIVER_PID, END_REASON, driver_state
from platform.tracking.mlflow_runs import RUN_NAME_TAG, resolve_tracking_uri
from platform.tracking.model_logging import log_deployable_model
from platform.tracking.orphans import close, find, latest_checkpoint_of, resume_line, running_runs
from platform.tracking.spool import Spool


def _client(uri: str | None):
    uri = resolve_tracking_uri(uri)
    return MlflowClient(uri), uri


def _cmd_list(client, args) -> int:
    shown = 0
    for run in running_runs(client):
        state = driver_state(run.data.tags)
        if state == "alive" or (state == "unknown" and not args.all):
            continue
        shown += 1
        tags = run.data.tags
        started = datetime.datetime.fromtimestamp(run.info.start_time / 1000).isoformat(sep=" ", timespec="seconds")
        print(f"{tags.get(RUN_NAME_TAG, run.info.run_name)}  run {run.info.run_id}  experiment {run.info.experiment_id}"
              f"  started {started}")
        print(f"    driver: {state} (pid {tags.get(DRIVER_PID, '?')} on {tags.get(DRIVER_HOST, '?')})")
        print(f"    latest checkpoint: {latest_checkpoint_of(run) or 'none'}")
        print(f"    resume: {resume_line(run)}")
        print(f"    close:  python -m platform.runs close {run.info.run_id}")
    if not shown:
        print("no RUNNING run whose driver is gone" + ("" if args.all else " (--all: also drivers on other hosts)"))
    return 0


def _cmd_close(client, args) -> int:
    code = 0
    for ref in args.runs:
        run = find(client, ref)
        state = driver_state(run.data.tags)
        if run.info.status != "RUNNING":
            print(f"{ref}: already {run.info.status}, left as it is")
            continue
        if state == "alive" and not args.force:
            print(f"{ref}: its driver (pid {run.data.tags[DRIVER_PID]}) still runs; stop it, or --force",
                  file=sys.stderr)
            code = 1
            continue
        close(client, run, args.reason)
        print(f"{ref}: FAILED ({client.get_run(run.info.run_id).data.tags[END_REASON]})")
    return code


def _cmd_resume(client, args) -> int:
    print(resume_line(find(client, args.run)))
    return 0


def _cmd_upload(client, args) -> int:
    spool = Spool(args.spool)
    if not Path(args.spool).is_dir():
        print(f"no spool at {args.spool}", file=sys.stderr)
        return 2
    pending = spool.pending()
    count = spool.replay(client)
    print(f"uploaded {count} of {pending} pending call(s) from {args.spool}; {spool.pending()} left")
    return 0


def _cmd_log_model(client, args) -> int:
    if not Path(args.checkpoint).exists():
        print(f"no checkpoint at {args.checkpoint}", file=sys.stderr)
        return 2
    run = find(client, args.run)
    model = log_deployable_model(args.resolved_uri, run.info.run_id, args.checkpoint, register=args.register,
                                 checkpoint_uri=str(args.checkpoint))
    print(f"MLflow model {model.model_uri}" + (f", registered as {model.registered_uri}" if model.registered_uri
                                               else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m platform.runs", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    # also after the sub-command (upload SPOOL --tracking-uri URI); SUPPRESS keeps a value given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tracking-uri", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command")
    listing = sub.add_parser("list", help="RUNNING runs whose driver is gone", parents=[common])
    listing.add_argument("--all", action="store_true", help="also runs whose driver cannot be checked from here")
    closing = sub.add_parser("close", help="mark runs FAILED with a tag saying why", parents=[common])
    closing.add_argument("runs", nargs="+", metavar="RUN")
    closing.add_argument("--reason", help="the reason recorded (default: the driver is gone)")
    closing.add_argument("--force", action="store_true", help="close even when the driver still runs")
    resuming = sub.add_parser("resume", help="print the command that continues a run", parents=[common])
    resuming.add_argument("run", metavar="RUN")
    uploading = sub.add_parser("upload", help="send a spool of MLflow calls to the tracking store",
                               parents=[common])
    uploading.add_argument("spool", metavar="SPOOL")
    logging_model = sub.add_parser("log-model", help="log a checkpoint's deployable model to a run",
                                   parents=[common])
    logging_model.add_argument("run", metavar="RUN")
    logging_model.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint folder or file")
    logging_model.add_argument("--register", metavar="NAME", help="also register it in the Model Registry")
    args = parser.parse_args(argv)
    if args.command is None:
        args.command, args.all = "list", False
    client, args.resolved_uri = _client(args.tracking_uri)
    commands = {"list": _cmd_list, "close": _cmd_close, "resume": _cmd_resume, "upload": _cmd_upload,
                "log-model": _cmd_log_model}
    return commands[args.command](client, args)



if __name__ == "__main__":
    sys.exit(main())
