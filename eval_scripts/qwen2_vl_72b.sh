#!/usr/bin/env bash
# Qwen2-VL-2B guiding Qwen2-VL-72B (lmms-eval wrapper qwen2_vl) on TextVQA at the 64% / 35% / 9% token ratios, plus the 72B baseline.
# usage: eval_scripts/qwen2_vl_72b.sh SMALL LARGE OUT [run.py options: --dry-run, --runs, --points, --limit, ...]
#   SMALL, LARGE: hub ids or local folders, e.g. Qwen/Qwen2-VL-2B-Instruct Qwen/Qwen2-VL-72B-Instruct
#   OUT: output folder (lmms-eval logs and SGL stats files); see eval_scripts/README.md
# The interpreter is $PYTHON (default: python3): the environment where lmms-eval and sgl_patch are installed.
set -euo pipefail
if [ $# -lt 3 ]; then
    sed -n '3,5p' "$0" | sed 's/^# //' >&2
    exit 2
fi
exec "${PYTHON:-python3}" "$(dirname "$0")/run.py" qwen2_vl --small "$1" --large "$2" --out "$3" "${@:4}"
