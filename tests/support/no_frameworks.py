"""Makes TensorFlow, torch, Keras and tf2onnx unimportable, to prove code needs none of them.

With CHEXRAY_TEST_NO_FRAMEWORKS=1 (`make test-fast`) tests/conftest.py calls `install()`
in the test process and puts `SITE_DIR` on PYTHONPATH, whose sitecustomize.py does the
same in every Python child process (`chexray serve`, the CLI, the engine's graph
optimiser). Importing a blocked package then raises ImportError naming the variable.

No imports beyond the standard library: sitecustomize loads this file by its path.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from pathlib import Path

VARIABLE = "CHEXRAY_TEST_NO_FRAMEWORKS"
BLOCKED = frozenset({"tensorflow", "torch", "keras", "tf_keras", "tf2onnx"})
SITE_DIR = Path(__file__).resolve().parent / "no_frameworks_site"


def requested(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    return environ.get(VARIABLE, "") not in ("", "0")


class BlockFrameworks(importlib.abc.MetaPathFinder):
    """First on sys.meta_path: refuses the blocked top-level packages and their modules."""

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in BLOCKED:
            raise ModuleNotFoundError(
                f"import of {fullname!r} refused: {VARIABLE}=1 runs without TensorFlow, torch, "
                "Keras and tf2onnx (only tests/convert may use them)",
                name=fullname,
            )
        return None


def install() -> None:
    """Block the frameworks in this process; an error if one is already imported."""
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
    if loaded:
        raise RuntimeError(f"{VARIABLE}=1, but {loaded[0]} was imported before the block")
    if not any(isinstance(f, BlockFrameworks) for f in sys.meta_path):
        sys.meta_path.insert(0, BlockFrameworks())


def child_pythonpath(environ: dict[str, str] | os._Environ = os.environ) -> str:
    """PYTHONPATH for child processes: SITE_DIR first, then what was there."""
    rest = environ.get("PYTHONPATH", "")
    return os.pathsep.join(p for p in (str(SITE_DIR), rest) if p)
