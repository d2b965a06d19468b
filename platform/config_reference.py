"""Print the reference of every config key (dotted name, default, comment) as a Markdown table.

    python -m platform.config_reference [--section train]

The text comes from the typed schema itself (``codetr/config/*.py``, :mod:`platform.core.config_docs`).
"""
from __future__ import annotations

import argparse
import sys

from platform.core.config_docs import markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m platform.config_reference", description=__doc__.split("\n\n")[0])
    parser.add_argument("--section", help="only keys under this top-level section (model, data, train, platform)")
    args = parser.parse_args(argv)
    sys.stdout.write(markdown(args.section) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
