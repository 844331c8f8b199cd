#!/usr/bin/env bash
# LLaVA-OneVision-0.5B guiding LLaVA-OneVision-72B (HF checkpoints, lmms-eval wrapper llava_hf) on TextVQA at the 64% / 35% / 9% token ratios, plus the 72B baseline.
# usage: eval_scripts/llava_ov_72b.sh SMALL LARGE OUT [run.py options: --dry-run, --runs, --points, --limit, ...]
#   SMALL, LARGE: hub ids or local folders, e.g. llava-hf/llava-onevision-qwen2-0.5b-ov-hf llava-hf/llava-onevision-qwen2-72b-ov-hf
#   OUT: output folder (lmms-eval logs and SGL stats files); see eval_scripts/README.md
# The interpreter is $PYTHON (default: python3): the environment where lmms-eval and sgl_patch are installed.
set -euo pipefail
if [ $# -lt 3 ]; then
    sed -n '3,5p' "$0" | sed 's/^# //' >&2
    exit 2
fi
exec "${PYTHON:-python3}" "$(dirname "$0")/run.py" llava_ov --small "$1" --large "$2" --out "$3" "${@:4}"
