"""lmms-eval's unmodified CLI on tiny saved models, with and without SGL's environment variables.

These tests run where lmms-eval is installed: ``make test-lmms`` (``.venv-lmms``,
``requirements/lmms-5.23.txt``: lmms-eval 0.7.3, transformers 5.23, torch 2.14.1 + torchvision).
Everywhere else (``.venv`` has no torchvision, which lmms-eval needs; the legacy environments)
every module of this directory is skipped as a whole, with the reason, before it is imported.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
LMMS_EVAL = importlib.util.find_spec("lmms_eval") is not None


class _SkippedModule(pytest.Module):
    """A test module skipped as a whole before it is imported."""

    reason = ""

    def collect(self):
        pytest.skip(self.reason)


def pytest_pycollect_makemodule(module_path, parent):
    if LMMS_EVAL or _HERE not in Path(module_path).resolve().parents:
        return None
    module = _SkippedModule.from_parent(parent, path=module_path)
    module.reason = (f"lmms/{Path(module_path).name}: lmms-eval is not installed in {sys.prefix} "
                     "(make test-lmms builds .venv-lmms from requirements/lmms-5.23.txt and runs these)")
    return module


@pytest.fixture(scope="session")
def lmms_root(tmp_path_factory):
    return tmp_path_factory.mktemp("lmms")


@pytest.fixture(scope="session")
def task_dir(lmms_root):
    """The tiny local task (``harness.make_task``), written once."""
    from .harness import make_task

    return make_task(lmms_root)


@pytest.fixture(scope="session")
def checkpoints(lmms_root):
    """``checkpoints(family) -> (small, large)``: tiny checkpoints with processors, saved once each."""
    from .checkpoints import saved

    done = {}

    def get(family: str) -> tuple[str, str]:
        if family not in done:
            done[family] = saved(family, lmms_root / "models" / family)
        return done[family]

    return get


def pytest_report_header(config):
    if LMMS_EVAL:
        from importlib.metadata import version

        return f"lmms-eval {version('lmms_eval')} (subprocesses: {os.path.basename(sys.executable)} -m lmms_eval)"
    return None
