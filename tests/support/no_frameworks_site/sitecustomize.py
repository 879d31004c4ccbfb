"""Python runs this at start-up when its folder is on PYTHONPATH: tests/conftest.py puts it
there for child processes while CHEXRAY_TEST_NO_FRAMEWORKS=1 (see ../no_frameworks.py)."""

import importlib.util
import os
from pathlib import Path

if os.environ.get("CHEXRAY_TEST_NO_FRAMEWORKS", "") not in ("", "0"):
    _path = Path(__file__).resolve().parent.parent / "no_frameworks.py"
    _spec = importlib.util.spec_from_file_location("_chexray_no_frameworks", _path)
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
    _module.install()
