"""Every ``ssl_cropmix`` module imports on its own, as the first import of a fresh process:
an import cycle between subpackages (e.g. ``evaluation.linear`` -> ``callbacks`` ->
``evaluation.finetune`` -> ``evaluation.linear``) only shows when the modules are entered
in an unusual order, which a test session that imported them before never does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = r"""
import importlib, pkgutil, sys
import ssl_cropmix
names = sorted(m.name for m in pkgutil.walk_packages(ssl_cropmix.__path__, "ssl_cropmix."))
bad = []
for name in names:
    for k in [k for k in sys.modules if k == "ssl_cropmix" or k.startswith("ssl_cropmix.")]:
        del sys.modules[k]  # third-party modules stay loaded: only our import order is fresh
    try:
        importlib.import_module(name)
    except Exception as e:
        bad.append(f"{name}: {type(e).__name__}: {e}")
print(len(names))
print("\n".join(bad))
"""


def test_every_module_imports_first():
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    count, *bad = out.stdout.strip().splitlines()
    assert int(count) > 40  # the walk found the package's modules
    assert not [b for b in bad if b], "\n".join(bad)
