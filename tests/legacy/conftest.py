"""Tests of the original codebases (InternVL2's own model code, the ``llava`` package), which run
on the legacy transformers line 4.37.2 .. 4.49 only.

``make test`` runs the whole suite in each of its environments; under transformers 5.x every test
module of this directory is skipped as a whole, with the reason, before it is imported (they
import the legacy codebases, which do not load there).  Under transformers 4.x the native-class
modules of ``tests/`` are skipped instead (``tests/conftest.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import transformers
from packaging.version import Version

LEGACY = Version(transformers.__version__).major < 5
_HERE = Path(__file__).resolve().parent


class _SkippedModule(pytest.Module):
    """A test module skipped as a whole before it is imported."""

    reason = ""

    def collect(self):
        pytest.skip(self.reason)


def pytest_pycollect_makemodule(module_path, parent):
    if LEGACY or _HERE not in Path(module_path).resolve().parents:
        return None
    module = _SkippedModule.from_parent(parent, path=module_path)
    module.reason = (f"legacy/{Path(module_path).name}: the original codebases run on transformers 4.37.2 .. 4.49, "
                     f"not {transformers.__version__} (make test-4.37 / test-4.49 run them)")
    return module
