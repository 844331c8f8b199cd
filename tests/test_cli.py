"""The README's first command: ``sgl-patch demo`` on the built-in tiny models."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])


def demo(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGL_")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "sgl_patch", "demo", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_demo_at_retain_one_reproduces_the_baseline():
    done = demo("--retain", "1.0")
    assert done.returncode == 0, done.stderr
    assert "same answer as baseline: 5/5" in done.stdout


def test_demo_prunes_and_reports_kept_tokens():
    done = demo("--retain", "0.25", "--layer", "2")
    assert done.returncode == 0, done.stderr
    rows = re.findall(r"^\s+(\d)\s+(\d+x\d+|text only)\s+(\d+)\s+(\d+)\s", done.stdout, re.M)
    assert [(int(v), int(k)) for _, _, v, k in rows] == [(64, 16), (48, 12), (16, 4), (32, 8), (0, 0)]


def test_demo_with_exit_at_zero_exits_every_image_sample():
    done = demo("--exit-threshold", "0")
    assert done.returncode == 0, done.stderr
    assert "early exits: 4/5" in done.stdout


def test_demo_rejects_bad_options_in_one_line():
    done = demo("--retain", "3")
    assert done.returncode == 1
    assert "retain" in done.stderr and "Traceback" not in done.stderr
