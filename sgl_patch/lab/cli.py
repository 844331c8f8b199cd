"""``sgl-patch lab ...``: the lab's commands (each module adds its own)."""

from __future__ import annotations


def add_parser(commands) -> None:
    from . import evaluation, train

    lab = commands.add_parser("lab", help="the SGL lab: a trained small/large Qwen2-VL pair on a drawn VQA task")
    sub = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND", required=True)
    train.add_parser(sub)
    evaluation.add_parser(sub)
