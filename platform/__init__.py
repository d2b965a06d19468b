"""The experiment platform: Ray Train / Ray Tune drivers, MLflow tracking and the CLIs.

    python -m platform.train    [--config experiments/X.yaml] [key=value ...]
    python -m platform.evaluate --config experiments/X.yaml --checkpoint PATH
    python -m platform.predict  --checkpoint PATH IMAGE...

Why this file loads the standard library: run from the repository root, this package
shadows the stdlib module ``platform``, which ``uuid``, ``torch``, ``ray`` and ``mlflow``
import (``platform.system()``, ``platform.machine()``, ...). So the package first loads
the stdlib ``platform.py`` from its file under another name and re-exports every name
of it: to everyone else ``platform`` still behaves like the stdlib module, and
``platform.train`` etc. are our submodules. The package is never installed into
site-packages (pyproject installs only ``codetr*``); commands run from the repository root.
"""
from __future__ import annotations

import importlib.util as _importlib_util
import sys as _sys
import sysconfig as _sysconfig


def _load_stdlib_platform():
    name = "_stdlib_platform"
    if name in _sys.modules:
        return _sys.modules[name]
    path = _sysconfig.get_path("stdlib") + "/platform.py"
    spec = _importlib_util.spec_from_file_location(name, path)
    module = _importlib_util.module_from_spec(spec)
    _sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_stdlib = _load_stdlib_platform()
for _name, _value in vars(_stdlib).items():
    if not (_name.startswith("__") and _name.endswith("__")):
        globals()[_name] = _value
del _name, _value
