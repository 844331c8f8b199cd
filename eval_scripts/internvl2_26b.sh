#!/usr/bin/env bash
# InternVL2-2B guiding InternVL2-26B (lmms-eval wrapper internvl2) on TextVQA, ChartQA, DocVQA, GQA, MMBench at the 64% / 35% / 9% token ratios, plus the 26B baseline.
# usage: eval_scripts/internvl2_26b.sh SMALL LARGE OUT [run.py options: --dry-run, --runs, --points, --limit, ...]
#   SMALL, LARGE: hub ids or local folders, e.g. OpenGVLab/InternVL2-2B OpenGVLab/InternVL2-26B
#   OUT: output folder (lmms-eval logs and SGL stats files); see eval_scripts/README.md
# The interpreter is $PYTHON (default: python3): the environment where lmms-eval and sgl_patch are installed.
set -euo pipefail
if [ $# -lt 3 ]; then
    sed -n '3,5p' "$0" | sed 's/^# //' >&2
    exit 2
fi
exec "${PYTHON:-python3}" "$(dirname "$0")/run.py" internvl2 --small "$1" --large "$2" --out "$3" "${@:4}"
