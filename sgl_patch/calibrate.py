"""Calibrate the SEE early-exit threshold offline: ``sgl-patch calibrate``.

Inputs:

* **stats files** (``SGL_STATS_FILE``, JSON lines) of a run with ``SGL_RECORD_BOTH=1``: per sample the
  small model's decision score ``exit_score`` (None: the sample can never exit, e.g. text only),
  ``small_answer`` and ``large_answer`` (text), ``prompt`` (the prompt's text, visual placeholders
  and special tokens dropped) and ``key`` (the caller's key, ``sgl_patch.sample_keys``, or None);
* **logged samples** of the same lmms-eval run (``--log_samples``: one
  ``<date>_samples_<task>.jsonl`` per task under ``--output_path``), whose lines carry ``doc_id``,
  ``target`` (the ground truth as text: a list is written as its Python repr), ``input`` (the
  task's prompt text), ``filtered_resps`` (the answer lmms-eval scored) and one field per metric
  (``exact_match``, ``anls``, ``relaxed_overall``, ...). Logged samples of several runs of one task
  (say the SGL calibration run and a run of the small model alone) are merged by ``doc_id``.

Matching a stats record to a logged sample: by ``key`` when it is set (equal to the sample's
``doc_id``, ``<task>:<doc_id>`` or ``<task>/<doc_id>``; lmms-eval's ``doc_hash`` is no key: it hashes
the doc without its images, the same for many docs); otherwise by text: the logged
``input`` (``<image>`` tags removed) must occur in the record's ``prompt``, compared with all
whitespace removed (tokenizers re-space text when decoding), and the longest such input wins.
Several logged samples with that same input (one question asked of several images) are taken in
``doc_id`` order by the records in file order — the order a single lmms-eval process runs them
(its request sorting is stable), so each record meets its own sample; a record that finds its input's samples used up
is a duplicate. Records without a sample and samples without a record are counted and reported.

Scoring an answer of a matched record: lmms-eval's own per-sample metric whenever a logged sample of
that doc (from any of the given runs) answered exactly that text (whitespace-trimmed); otherwise a
simple rule against ``target``: text is lower-cased, punctuation and the articles a/an/the are
dropped and whitespace collapsed; a list of 10 or more answers (VQA-style annotations) scores
``min(1, matches / 3)``, a shorter list 1 if any answer matches; a single capital letter (a
multiple-choice option) matches an answer that starts with that letter (``B``, ``B.``, ``(B) ...``);
numbers match numerically (``2.0`` = ``2``); anything else by normalised exact match. How often the
rule agrees with lmms-eval's metric on the logged answers is reported, per task: when it is low (a
task whose logged ``target`` is not its answers), add the logged samples of a run of the other
model, so both answers are scored by lmms-eval itself.

For every distinct score t (plus "never"), a sample exits when ``exit_score >= t``: the table gives
the share of samples sent to the large model and the accuracy of the mix (small answer for exited
samples, large answer for the rest), averaged over matched records.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import re
import string
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# fields of a logged sample that are not metrics
_NOT_METRICS = {"doc_id", "doc", "target", "arguments", "input", "resps", "filtered_resps", "token_counts",
                "doc_hash", "input_media"}
# metrics preferred when a sample has several numeric fields (chartqa: relaxed_overall beside its splits)
_PREFERRED_METRICS = ("exact_match", "anls", "relaxed_overall", "accuracy", "acc", "score")
_SAMPLES_NAME = re.compile(r"_samples_(.+)\.jsonl$")
_IMAGE_TAG = re.compile(r"<image(?: \d+)?>")
_WHITESPACE = re.compile(r"\s+")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation})
_OPTION = re.compile(r"^\s*\(?([A-Z])(?:[).:,\s]|$)")
_ANCHOR, _STRIDE = 16, 4  # characters of the whitespace-free text that index logged inputs, and their spacing


# -- reading ---------------------------------------------------------------------------------------

def _json_lines(path: Path, what: str) -> list[dict]:
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist or is not a file")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON line ({error.msg}); is this a {what}?") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def load_stats(paths, skipped: list | None = None) -> list[dict]:
    """The records of the stats files, in file order, each with ``_where`` (file:line) for messages.

    Records of text-only calls (no visual token: the plugin passed them through, without answers)
    are left out and appended to ``skipped``."""
    records = []
    for path in map(Path, paths):
        for number, record in enumerate(_json_lines(path, "stats file"), 1):
            where = f"{path}:{number}"
            missing = [name for name in ("exit_score", "large_answer") if name not in record]
            if missing:
                raise ValueError(f"{where}: no {' or '.join(missing)}: not a record of SGL_STATS_FILE")
            score = record["exit_score"]
            if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
                raise ValueError(f"{where}: exit_score must be a number or null, got {score!r}")
            if score is not None and math.isnan(score):  # never exits, as in the plugin
                record = {**record, "exit_score": None}
            if record.get("n_visual") == 0 and record.get("large_answer") is None:
                if skipped is not None:
                    skipped.append(where)
                continue
            if record.get("large_answer") is None or (score is not None and record.get("small_answer") is None):
                raise ValueError(f"{where}: the record lacks the small or the large model's answer: write the "
                                 "stats file with SGL_RECORD_BOTH=1 (and early exit scored, e.g. "
                                 "SGL_EXIT_THRESHOLD=1.01, which never exits)")
            if record.get("key") is None and not isinstance(record.get("prompt"), str):
                raise ValueError(f"{where}: the record has neither a key nor a prompt to match it by")
            records.append({**record, "_where": where})
    if not records:
        raise ValueError("the stats files hold no records")
    return records


def sample_files(paths) -> list[Path]:
    """Logged-samples files: the given files, and every ``*_samples_*.jsonl`` under given folders."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.rglob("*_samples_*.jsonl"))
            if not found:
                raise ValueError(f"no lmms-eval logged samples (*_samples_<task>.jsonl) under {path}: "
                                 "was lmms-eval run with --log_samples and --output_path there?")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"logged samples {path} do not exist")
    return files


def _text(value) -> str | None:
    """A logged response as text (lmms-eval flattens one-element lists; older logs keep them)."""
    while isinstance(value, list) and value:
        value = value[0]
    return value if isinstance(value, str) else None


def _metric_of(sample: dict, wanted: str | None, where: str) -> str | None:
    numeric = [k for k, v in sample.items() if k not in _NOT_METRICS and isinstance(v, (int, float))
               and not isinstance(v, bool)]
    if wanted is not None:
        if wanted in sample and wanted not in numeric:
            raise ValueError(f"{where}: metric {wanted!r} is not a number per sample ({sample[wanted]!r})")
        return wanted if wanted in numeric else None
    for name in _PREFERRED_METRICS:
        if name in numeric:
            return name
    return sorted(numeric)[0] if numeric else None


@dataclass
class Doc:
    """One logged sample (merged over the runs that logged its task)."""

    task: str
    doc_id: object
    input: str
    target: str
    order: int  # position among all logged samples (file order, then line order)
    metric: str | None = None
    scores: dict = field(default_factory=dict)  # answer text (trimmed) -> lmms-eval's metric value

    @property
    def flat(self) -> str:
        return _flat(self.input)


def load_samples(paths, metric: str | None = None, task: str | None = None) -> list[Doc]:
    docs: dict = {}
    for path in sample_files(paths):
        name = _SAMPLES_NAME.search(path.name)
        task_name = name.group(1) if name else path.stem
        if task is not None and task_name != task:
            continue
        for number, sample in enumerate(_json_lines(path, "lmms-eval samples file"), 1):
            where = f"{path}:{number}"
            if "doc_id" not in sample or "target" not in sample:
                raise ValueError(f"{where}: no doc_id or target: not an lmms-eval logged sample (--log_samples)")
            text = sample.get("input")
            if text is None and isinstance(sample.get("arguments"), list) and sample["arguments"]:
                text = sample["arguments"][0]
            if not isinstance(text, str):
                raise ValueError(f"{where}: the logged sample has no input text")
            doc = docs.get((task_name, sample["doc_id"]))
            if doc is None:
                doc = docs[(task_name, sample["doc_id"])] = Doc(
                    task_name, sample["doc_id"], text, str(sample["target"]), len(docs))
            name_of_metric = _metric_of(sample, metric, where)
            answer = _text(sample.get("filtered_resps", sample.get("resps")))
            if name_of_metric is not None and answer is not None:
                doc.metric = doc.metric or name_of_metric
                doc.scores.setdefault(answer.strip(), float(sample[name_of_metric]))
    if not docs:
        raise ValueError(f"no logged samples{f' of task {task!r}' if task else ''} in {', '.join(map(str, paths))}")
    if metric is not None and not any(d.metric for d in docs.values()):
        raise ValueError(f"no logged sample has a numeric metric {metric!r}")
    return sorted(docs.values(), key=lambda d: d.order)


# -- matching --------------------------------------------------------------------------------------

def _flat(text: str) -> str:
    """Text compared for matching: NFKC, ``<image>`` tags and all whitespace removed."""
    return _WHITESPACE.sub("", _IMAGE_TAG.sub("", unicodedata.normalize("NFKC", text)))


def match(records: list[dict], docs: list[Doc]):
    """Pairs (record, doc) in record order, and a report of what was left unmatched."""
    by_key: dict = {}
    for doc in docs:
        for key in (str(doc.doc_id), f"{doc.task}:{doc.doc_id}", f"{doc.task}/{doc.doc_id}"):
            by_key.setdefault(key, []).append(doc)
    by_input: dict = {}  # whitespace-free input -> its docs in doc order
    for doc in docs:
        by_input.setdefault(doc.flat, []).append(doc)
    for group in by_input.values():
        group.sort(key=lambda d: (d.task, _doc_order(d.doc_id), d.order))
    # Each input is indexed by one of its pieces of _ANCHOR characters, the one fewest other inputs
    # share (pieces at every _STRIDE-th offset are counted): a prompt then looks up its own pieces
    # at every offset, and checks only the inputs indexed there. Short inputs are checked always.
    short = [text for text in by_input if len(text) < _ANCHOR]
    pieces = {text: {text[i:i + _ANCHOR] for i in range(0, len(text) - _ANCHOR + 1, _STRIDE)}
              for text in by_input if len(text) >= _ANCHOR}
    shared = Counter(piece for text_pieces in pieces.values() for piece in text_pieces)
    anchors: dict = {}
    for text, text_pieces in pieces.items():
        anchors.setdefault(min(text_pieces, key=lambda p: (shared[p], p)), []).append(text)
    del pieces, shared

    used: set = set()
    pairs, no_sample, duplicates = [], [], []
    for record in records:
        doc = None
        key = record.get("key")
        prompt = _flat(record["prompt"]) if isinstance(record.get("prompt"), str) else None
        if key is not None and str(key) in by_key:
            free = [d for d in by_key[str(key)] if id(d) not in used]
            if prompt is not None and len(free) > 1:
                free = [d for d in free if d.flat in prompt] or free
            doc = free[0] if free else None
            if doc is None:
                duplicates.append(record)
                continue
        elif prompt is not None:
            found = {text for text in short if text in prompt}
            for start in range(len(prompt) - _ANCHOR + 1):
                for text in anchors.get(prompt[start:start + _ANCHOR], ()):
                    if text in prompt:
                        found.add(text)
            if not found:
                no_sample.append(record)
                continue
            best = max(found, key=lambda t: (len(t), t))
            doc = next((d for d in by_input[best] if id(d) not in used), None)
            if doc is None:
                duplicates.append(record)
                continue
        else:
            no_sample.append(record)
            continue
        used.add(id(doc))
        pairs.append((record, doc))
    report = {"records": len(records), "matched": len(pairs), "unmatched_records": len(no_sample) + len(duplicates),
              "records_without_sample": [r["_where"] for r in no_sample],
              "duplicate_records": [r["_where"] for r in duplicates],
              "samples_without_record": sum(id(d) not in used for d in docs), "samples": len(docs)}
    return pairs, report


def _doc_order(doc_id):
    return (0, doc_id, "") if isinstance(doc_id, (int, float)) else (1, 0, str(doc_id))


# -- scoring ---------------------------------------------------------------------------------------

def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", str(text)).lower().translate(_PUNCTUATION)
    return _WHITESPACE.sub(" ", _ARTICLES.sub(" ", text)).strip()


def _number(text: str):
    try:
        value = float(text.strip().replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _same(answer: str, truth: str) -> bool:
    a, b = _number(answer), _number(truth)
    if a is not None and b is not None:
        return a == b
    return normalise(answer) == normalise(truth)


def rule_score(answer: str, target: str) -> float:
    """The documented fallback rule (module docstring) for an answer lmms-eval did not score."""
    target = target.strip()
    if target.startswith("[") and target.endswith("]"):
        try:
            truths = ast.literal_eval(target)
        except (ValueError, SyntaxError):
            truths = None
        if isinstance(truths, (list, tuple)) and truths:
            matches = sum(_same(answer, str(t)) for t in truths)
            return min(1.0, matches / 3) if len(truths) >= 10 else float(matches > 0)
    if re.fullmatch(r"[A-Z]", target):
        option = _OPTION.match(answer)
        return float(option is not None and option.group(1) == target)
    return float(_same(answer, target))


def score(answer: str, doc: Doc) -> tuple[float, bool]:
    """(correctness in [0, 1], whether lmms-eval's own metric gave it)."""
    text = answer.strip()
    if text in doc.scores:
        return doc.scores[text], True
    return rule_score(text, doc.target), False


def agreement(docs: list[Doc]) -> dict:
    """Per task: the share of logged answers where the rule gives lmms-eval's metric value."""
    out = {}
    for doc in docs:
        for text, value in doc.scores.items():
            agree, total = out.get(doc.task, (0, 0))
            out[doc.task] = (agree + (abs(rule_score(text, doc.target) - value) < 1e-9), total + 1)
    return {task: agree / total for task, (agree, total) in out.items()}


# -- the sweep -------------------------------------------------------------------------------------

def sweep(rows: list[tuple]) -> list[dict]:
    """``rows``: (exit_score or None, small correctness, large correctness) per sample.

    One entry per distinct score t, ascending, then ``threshold=None`` (never exit): samples with
    ``score >= t`` take the small answer, the rest (and every None score) the large one.
    """
    n = len(rows)
    if n == 0:
        raise ValueError("no matched samples to calibrate on")
    scored = sorted((r for r in rows if r[0] is not None), key=lambda r: r[0], reverse=True)
    large_total = sum(r[2] for r in rows)
    table, exited, gain, i = [], 0, 0.0, 0
    while i < len(scored):  # thresholds from the highest score down: each adds its samples to the exits
        t = scored[i][0]
        while i < len(scored) and scored[i][0] == t:
            exited += 1
            gain += scored[i][1] - scored[i][2]
            i += 1
        table.append(_row(t, n, exited, large_total + gain))
    table.reverse()
    table.append(_row(None, n, 0, large_total))
    return table


def _row(threshold, n, exited, correct) -> dict:
    return {"threshold": threshold, "exits": exited, "to_large": n - exited, "share_large": (n - exited) / n,
            "accuracy": correct / n}


def parse_target(text: str) -> tuple[float, bool]:
    """``0.8`` (absolute accuracy) or ``98%`` (relative to the large model alone): (value, relative)."""
    raw = text.strip()
    relative = raw.endswith("%")
    try:
        value = float(raw[:-1] if relative else raw)
    except ValueError:
        raise ValueError(f"--target {text!r}: expected an accuracy such as 0.80, or a share of the large "
                         "model's accuracy such as 98%") from None
    if relative:
        if not 0 < value < math.inf:
            raise ValueError(f"--target {text!r}: the percentage must be positive")
        return value / 100, True
    if not 0 <= value <= 1:
        raise ValueError(f"--target {text!r}: an absolute accuracy lies in [0, 1] (write 98% for a share of "
                         "the large model's accuracy)")
    return value, False


def choose(table: list[dict], target: float) -> dict | None:
    """The row of the smallest share sent to the large model whose accuracy reaches ``target``."""
    reaching = [row for row in table if row["accuracy"] >= target - 1e-12]
    return min(reaching, key=lambda r: (r["share_large"], -r["accuracy"])) if reaching else None


# -- the whole tool --------------------------------------------------------------------------------

def calibrate(stats, samples, *, target: str | None = None, metric: str | None = None,
              task: str | None = None) -> dict:
    text_only: list = []
    records = load_stats(stats, skipped=text_only)
    docs = load_samples(samples, metric=metric, task=task)
    pairs, report = match(records, docs)
    report["text_only_records"] = len(text_only)
    if not pairs:
        raise ValueError(f"none of the {len(records)} stats records matches a logged sample "
                         f"(of {len(docs)}): are these files of the same run and tasks?")
    rows, by = [], {"small": {"metric": 0, "rule": 0}, "large": {"metric": 0, "rule": 0}}
    for record, doc in pairs:
        exit_score = record["exit_score"]
        large, large_by_metric = score(record["large_answer"], doc)
        by["large"]["metric" if large_by_metric else "rule"] += 1
        small = 0.0
        if exit_score is not None:
            small, small_by_metric = score(record["small_answer"], doc)
            by["small"]["metric" if small_by_metric else "rule"] += 1
        rows.append((exit_score, small, large))
    table = sweep(rows)
    scored = [r for r in rows if r[0] is not None]
    result = {
        "matching": report,
        "metrics": {d.task: d.metric for d in docs if d.metric} or {},
        "scored_by": by,
        "rule_agreement": agreement(docs),
        "samples": len(rows),
        "never_exit": len(rows) - len(scored),
        "large_alone": table[-1]["accuracy"],
        "small_alone": table[0]["accuracy"] if len(table) > 1 else None,
        "thresholds": table,
        "target": None,
        "chosen": None,
    }
    if target is not None:
        value, relative = parse_target(target)
        goal = value * result["large_alone"] if relative else value
        result["target"] = {"given": target, "accuracy": goal}
        result["chosen"] = choose(table, goal)
    return result


def _fmt_threshold(t) -> str:
    return "never" if t is None else f"{t:.4f}"


def render(result: dict, max_rows: int = 30) -> str:
    m = result["matching"]
    lines = [f"matched {m['matched']} of {m['records']} stats records to {m['samples']} logged samples"]
    if m["unmatched_records"]:
        lines.append(f"  unmatched records: {m['unmatched_records']} ({len(m['records_without_sample'])} without a "
                     f"logged sample whose input is in their prompt or whose doc matches their key, "
                     f"{len(m['duplicate_records'])} duplicates), first: "
                     + ", ".join((m["records_without_sample"] + m["duplicate_records"])[:3]))
    if m.get("text_only_records"):
        lines.append(f"  text-only records left out (passed through without answers): {m['text_only_records']}")
    if m["samples_without_record"]:
        lines.append(f"  logged samples without a stats record: {m['samples_without_record']}")
    metrics = ", ".join(f"{task}: {name}" for task, name in sorted(result["metrics"].items())) or "none"
    lines.append(f"lmms-eval metrics: {metrics}")
    for who in ("small", "large"):
        b = result["scored_by"][who]
        lines.append(f"  {who} answers scored by the lmms-eval metric: {b['metric']}, by the fallback rule: {b['rule']}")
    for task, share in sorted(result["rule_agreement"].items()):
        note = ""
        if share < 0.9 and any(b["rule"] for b in result["scored_by"].values()):
            note = ("  <- low: add the logged samples of a run of the other model (--samples) so lmms-eval "
                    "scores both answers")
        lines.append(f"  fallback rule agrees with the metric on {share:.1%} of {task}'s logged answers{note}")
    lines.append(f"samples: {result['samples']} ({result['never_exit']} without a score, always sent to the large "
                 f"model); large model alone: {result['large_alone']:.4f}"
                 + ("" if result["small_alone"] is None else f", smallest threshold (most exits): "
                    f"{result['small_alone']:.4f}"))
    table = result["thresholds"]
    shown = table
    if max_rows and len(table) > max_rows:
        keep = {0, len(table) - 1} | {round(i * (len(table) - 1) / (max_rows - 1)) for i in range(max_rows)}
        if result["chosen"] is not None:
            keep.add(table.index(result["chosen"]))
        shown = [table[i] for i in sorted(keep)]
        lines.append(f"({len(shown)} of {len(table)} thresholds shown; --max-rows 0 shows all)")
    lines.append("")
    lines.append("  threshold   exits  to large  share large  accuracy")
    lines.append("  ---------  ------  --------  -----------  --------")
    for row in shown:
        mark = "  <-" if row is result["chosen"] else ""
        lines.append(f"  {_fmt_threshold(row['threshold']):>9}  {row['exits']:>6}  {row['to_large']:>8}  "
                     f"{row['share_large']:>11.4f}  {row['accuracy']:>8.4f}{mark}")
    lines.append("")
    if result["target"] is not None:
        goal = result["target"]
        chosen = result["chosen"]
        if chosen is None:
            best = max(table, key=lambda r: r["accuracy"])
            lines.append(f"target {goal['given']} (accuracy {goal['accuracy']:.4f}): no threshold reaches it; the best "
                         f"is {best['accuracy']:.4f} at threshold {_fmt_threshold(best['threshold'])}")
        elif chosen["threshold"] is None:
            lines.append(f"target {goal['given']} (accuracy {goal['accuracy']:.4f}): only the large model alone "
                         f"reaches it: SGL_EXIT_THRESHOLD=none")
        else:
            lines.append(f"target {goal['given']} (accuracy {goal['accuracy']:.4f}): SGL_EXIT_THRESHOLD="
                         f"{chosen['threshold']!r} sends {chosen['share_large']:.1%} of samples to the large "
                         f"model, accuracy {chosen['accuracy']:.4f}")
    return "\n".join(lines)


def plot(result: dict, path) -> None:
    """Accuracy against the share of samples sent to the large model, as a PNG."""
    try:
        import matplotlib
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install matplotlib") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = result["thresholds"]
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    ax.plot([r["share_large"] for r in table], [r["accuracy"] for r in table], marker=".", linewidth=1,
            label="small if score >= threshold, else large")
    ax.axhline(result["large_alone"], color="grey", linestyle=":", linewidth=1, label="large model alone")
    if result["target"] is not None:
        ax.axhline(result["target"]["accuracy"], color="tab:red", linestyle="--", linewidth=1,
                   label=f"target {result['target']['given']}")
    chosen = result["chosen"]
    if chosen is not None:
        ax.plot([chosen["share_large"]], [chosen["accuracy"]], "o", color="tab:red",
                label=f"threshold {_fmt_threshold(chosen['threshold'])}")
    ax.set_xlabel("share of samples sent to the large model")
    ax.set_ylabel("accuracy")
    ax.set_xlim(-0.02, 1.02)
    ax.set_title(f"SEE threshold calibration ({result['samples']} samples)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


# -- command line (sgl-patch calibrate) ------------------------------------------------------------

def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "calibrate", help="choose the early-exit threshold from a SGL_RECORD_BOTH=1 run and lmms-eval's logs",
        description=("Read the stats (SGL_STATS_FILE, written with SGL_RECORD_BOTH=1) and lmms-eval's logged "
                     "samples (--log_samples) of one run, score both models' answers, and for every threshold "
                     "give the share of samples sent to the large model and the accuracy of the mix."))
    parser.add_argument("--stats", nargs="+", required=True, metavar="FILE", help="stats files (JSON lines)")
    parser.add_argument("--samples", nargs="+", required=True, metavar="PATH",
                        help="lmms-eval *_samples_<task>.jsonl files, or output folders searched for them; "
                             "several runs of one task are merged by doc_id")
    parser.add_argument("--target", metavar="ACC",
                        help="accuracy to reach: absolute (0.80) or relative to the large model alone (98%%)")
    parser.add_argument("--metric", metavar="NAME", help="per-sample metric field of the logged samples "
                        f"(default: the first of {', '.join(_PREFERRED_METRICS)}, else the only numeric field)")
    parser.add_argument("--task", metavar="NAME", help="use only the logged samples of this task")
    parser.add_argument("--plot", metavar="PNG", help="write accuracy against the share sent to the large model")
    parser.add_argument("--json", metavar="FILE", help="write every figure as JSON ('-': standard output)")
    parser.add_argument("--max-rows", type=int, default=30, metavar="N",
                        help="thresholds printed (default: 30; 0: all)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    parser.set_defaults(run=run_cli)
    return parser


def run_cli(args) -> int:
    result = calibrate(args.stats, args.samples, target=args.target, metric=args.metric, task=args.task)
    if args.json == "-":
        json.dump(result, sys.stdout, indent=1)
        print()
    else:
        print(render(result, max_rows=args.max_rows))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump(result, handle, indent=1)
            print(f"  figures written to {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"  plot written to {args.plot}", file=sys.stderr if args.json == "-" else sys.stdout)
    return 0
