"""A local Ray cluster listens on 127.0.0.1 only: the switch Ray reads when it is imported.

Kept apart from :mod:`.ray_cluster` (which imports ``ray``): the commands call
:func:`keep_local_ray_on_loopback` in their ``__main__`` before importing anything that imports ``ray``.
"""
from __future__ import annotations

import os
import sys

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def keep_local_ray_on_loopback() -> None:
    """A local Ray cluster (no ``RAY_ADDRESS``) listens on 127.0.0.1 only, not on every interface.

    Ray reads this switch once, when it is imported (its single-machine mode, the default on macOS
    and Windows: node address 127.0.0.1, every server bound to it). Call before anything imports
    ray; joining a cluster (``RAY_ADDRESS``) is left as it is.
    """
    if not os.environ.get("RAY_ADDRESS") and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ENV, "0")
