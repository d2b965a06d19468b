"""``python -m platform.train``: one training run (:mod:`platform.train.cli`)."""
import sys

from platform.core.loopback import keep_local_ray_on_loopback

keep_local_ray_on_loopback()   # before anything imports ray: a local cluster listens on 127.0.0.1 only

from platform.train.cli import main  # noqa: E402  (after the loopback switch, which Ray reads on import)

sys.exit(main())
