"""``sgl-patch calibrate``: stats files + lmms-eval logged samples -> the early-exit threshold table.

The logged samples are written here the way lmms-eval 0.7.3 saves them (``--log_samples``:
``EvaluationTracker.save_results_samples``): one ``<date>_samples_<task>.jsonl`` per task under
``<output_path>/<model>/``, each line with ``doc_id``, ``target`` (``str()`` of the task's target),
``input`` (the task's prompt text), ``filtered_resps`` (flattened to the one answer; ``resps``
dropped when equal), ``token_counts``, ``doc_hash`` and the task's per-sample metric fields.
"""

from __future__ import annotations

import json

import pytest

from sgl_patch import calibrate
from sgl_patch.cli import main

POST = "\nAnswer the question using a single word or phrase."


def chat(question: str) -> str:
    """What the plugin records as ``prompt``: the decoded chat prompt, special tokens and visual
    placeholders dropped (Qwen2-VL's template)."""
    return f"system\nYou are a helpful assistant.\nuser\n{question}{POST}\nassistant\n"


def record(question, score, small, large, key=None, prompt=None):
    return {"n_visual": 64, "n_kept": 4, "layer": 2, "exited": False, "exit_score": score,
            "small_seconds": 0.1, "large_seconds": 0.5, "batch_size": 1, "key": key,
            "prompt": chat(question) if prompt is None else prompt, "small_answer": small,
            "large_answer": large, "model": "Qwen2VLForConditionalGeneration"}


def logged(doc_id, question, target, answer, **metrics):
    sample = {"doc_id": doc_id, "target": str(target), "token_counts": [None], "doc_hash": f"hash{doc_id}",
              **metrics, "input": question + POST, "filtered_resps": answer}
    return sample


def same_rows(got, expected):
    """Rows of (threshold or None, numbers...) equal within float rounding."""
    return len(got) == len(expected) and all(
        len(g) == len(e) and all(a == b if a is None or b is None else a == pytest.approx(b) for a, b in zip(g, e))
        for g, e in zip(got, expected))


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# the hand-computable case: (question, target, score, small answer, large answer)
CASE = [
    ("What color is the car?", "red", 0.9, "red", "red"),            # small right, large right
    ("What animal is shown?", "dog", 0.7, "cat", "dog"),             # small wrong, large right
    ("How many people are there?", "2", 0.5, "2", "3"),              # small right, large wrong
    ("What is on the table?", "laptop", 0.2, "phone", "laptop"),     # small wrong, large right
]
SMALL_OK = {0.9: 1, 0.7: 0, 0.5: 1, 0.2: 0}
LARGE_OK = {0.9: 1, 0.7: 1, 0.5: 0, 0.2: 1}


@pytest.fixture
def run_files(tmp_path):
    """A calibration run: stats of 4 samples, and lmms-eval's log of the large answers it returned."""
    stats = write_jsonl(tmp_path / "gqa__calib_r09.jsonl",
                        [record(q, s, small, large) for q, _, s, small, large in CASE])
    samples = [logged(i, q, t, large, exact_match=float(large == t)) for i, (q, t, _, _, large) in enumerate(CASE)]
    write_jsonl(tmp_path / "out" / "model__sanitized" / "20250101_120000_samples_gqa.jsonl", samples)
    return stats, tmp_path / "out"


def expected_table():
    """The definitions, computed here: exit when score >= t; the mix takes the small answer then."""
    scores = sorted(SMALL_OK)
    rows = []
    for t in scores + [None]:
        exits = [s for s in scores if t is not None and s >= t]
        correct = sum(SMALL_OK[s] if s in exits else LARGE_OK[s] for s in scores)
        rows.append((t, (len(scores) - len(exits)) / len(scores), correct / len(scores)))
    return rows


def test_threshold_table_follows_the_definitions(run_files, capsys):
    stats, out = run_files
    result = calibrate.calibrate([stats], [out])
    got = [(r["threshold"], r["share_large"], r["accuracy"]) for r in result["thresholds"]]
    assert same_rows(got, expected_table())
    # by hand: t=0.2 all exit (0.5 acc), 0.5 -> 0.75 at share 0.25, 0.7 -> 0.5, 0.9 -> 0.75, never -> 0.75
    assert same_rows(got, [(0.2, 0.0, 0.5), (0.5, 0.25, 0.75), (0.7, 0.5, 0.5), (0.9, 0.75, 0.75),
                           (None, 1.0, 0.75)])
    assert result["large_alone"] == pytest.approx(0.75) and result["small_alone"] == pytest.approx(0.5)
    assert result["matching"]["matched"] == 4 and result["matching"]["unmatched_records"] == 0
    assert result["scored_by"] == {"small": {"metric": 1, "rule": 3}, "large": {"metric": 4, "rule": 0}}

    assert main(["calibrate", "--stats", str(stats), "--samples", str(out)]) == 0
    text = capsys.readouterr().out
    assert "matched 4 of 4 stats records" in text
    assert "lmms-eval metrics: gqa: exact_match" in text
    assert "     0.5000       3         1       0.2500    0.7500" in text


@pytest.mark.parametrize("target, threshold, share", [
    ("0.75", 0.5, 0.25),     # the smallest share whose accuracy reaches 0.75
    ("100%", 0.5, 0.25),     # 100% of the large model alone (0.75)
    ("0.5", 0.2, 0.0),       # every sample exits
    ("0.6", 0.5, 0.25),
])
def test_target_picks_the_smallest_share_that_reaches_it(run_files, target, threshold, share):
    stats, out = run_files
    result = calibrate.calibrate([stats], [out], target=target)
    assert result["chosen"]["threshold"] == threshold
    assert result["chosen"]["share_large"] == pytest.approx(share)


def test_unreachable_target_and_cli_outputs(run_files, tmp_path, capsys):
    stats, out = run_files
    png, js = tmp_path / "calib.png", tmp_path / "calib.json"
    code = main(["calibrate", "--stats", str(stats), "--samples", str(out), "--target", "0.8",
                 "--plot", str(png), "--json", str(js)])
    assert code == 0
    text = capsys.readouterr().out
    assert "target 0.8 (accuracy 0.8000): no threshold reaches it" in text
    data = png.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    figures = json.loads(js.read_text())
    assert figures["chosen"] is None and figures["target"]["accuracy"] == pytest.approx(0.8)
    assert [r["share_large"] for r in figures["thresholds"]] == pytest.approx([0, 0.25, 0.5, 0.75, 1])

    assert main(["calibrate", "--stats", str(stats), "--samples", str(out), "--target", "98%"]) == 0
    text = capsys.readouterr().out
    assert "SGL_EXIT_THRESHOLD=0.5 sends 25.0% of samples to the large model, accuracy 0.7500" in text

    assert main(["calibrate", "--stats", str(stats), "--samples", str(out), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 4


def test_unmatched_and_duplicate_records_are_reported(tmp_path, capsys):
    sign = "What is written on the sign?"
    samples = [logged(3, sign, "stop", "stop", exact_match=1.0),
               logged(7, sign, "exit", "exit", exact_match=1.0),  # the same question on another image
               logged(9, "Which way?", "left", "left", exact_match=1.0),
               logged(11, "Never asked?", "yes", "yes", exact_match=1.0)]
    write_jsonl(tmp_path / "out" / "m" / "20250101_120000_samples_textvqa_val.jsonl", samples)
    stats = write_jsonl(tmp_path / "stats.jsonl", [
        record(sign, 0.4, "stop", "stop"),          # -> doc 3 (the first of the two, in doc_id order)
        record(sign, 0.6, "exit", "exit"),          # -> doc 7
        record(sign, 0.8, "stop", "stop"),          # a third one: both docs are taken -> duplicate
        record("Who is there?", 0.5, "a", "b"),     # no logged input occurs in its prompt
        record("unrelated", 0.9, "left", "right", key=9),                   # by key: doc 9
        # tokenizers re-space text when decoding: whitespace does not count
        record(None, 0.3, "x", "y", prompt="user\n Which   way ?\n" + POST + "\nassistant"),
    ])
    pairs, report = calibrate.match(calibrate.load_stats([stats]), calibrate.load_samples([tmp_path / "out"]))
    assert [(r["exit_score"], d.doc_id) for r, d in pairs] == [(0.4, 3), (0.6, 7), (0.9, 9)]
    assert report["unmatched_records"] == 3 and report["samples_without_record"] == 1
    assert [w.rsplit(":", 1)[1] for w in report["records_without_sample"]] == ["4"]
    assert [w.rsplit(":", 1)[1] for w in report["duplicate_records"]] == ["3", "6"]

    assert main(["calibrate", "--stats", str(stats), "--samples", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "matched 3 of 6 stats records" in text
    assert "unmatched records: 3 (1 without a logged sample" in text and "2 duplicates" in text
    assert "logged samples without a stats record: 1" in text


def test_whitespace_free_matching_takes_the_longest_input(tmp_path):
    samples = [logged(0, "What is it?", "a", "a", exact_match=1.0),
               logged(1, "Look closely. What is it?", "b", "b", exact_match=1.0)]
    write_jsonl(tmp_path / "s" / "x_samples_t.jsonl", samples)
    stats = write_jsonl(tmp_path / "st.jsonl", [record("Look closely.  What is it ?", 0.5, "b", "b"),
                                                record("What is it?", 0.5, "a", "a")])
    pairs, _ = calibrate.match(calibrate.load_stats([stats]), calibrate.load_samples([tmp_path / "s"]))
    assert [d.doc_id for _, d in pairs] == [1, 0]


def test_other_runs_score_the_other_answer_with_lmms_evals_metric(tmp_path):
    """TextVQA's logged target is not its answers; a run of the small model alone scores its answers."""
    q = "What brand is the camera?"
    write_jsonl(tmp_path / "calib" / "m" / "d_samples_textvqa_val.jsonl",
                [logged(0, q, "answer", "canon", exact_match=1.0)])
    write_jsonl(tmp_path / "small" / "m" / "d_samples_textvqa_val.jsonl",
                [logged(0, q, "answer", "nikon", exact_match=2 / 3)])
    stats = write_jsonl(tmp_path / "st.jsonl", [record(q, 0.8, " nikon", "canon"),
                                                {**record("Text only", None, None, "x")}])
    result = calibrate.calibrate([stats], [tmp_path / "calib", tmp_path / "small"])
    assert result["scored_by"] == {"small": {"metric": 1, "rule": 0}, "large": {"metric": 1, "rule": 0}}
    # the text-only record matched nothing; the one sample exits at t=0.8 with the small answer's 2/3
    assert same_rows([(r["threshold"], r["accuracy"]) for r in result["thresholds"]], [(0.8, 2 / 3), (None, 1.0)])

    # alone, the calibration run's log scores the small answer by the rule against the literal target
    result = calibrate.calibrate([stats], [tmp_path / "calib"])
    assert result["scored_by"]["small"] == {"metric": 0, "rule": 1}
    assert result["rule_agreement"] == {"textvqa_val": 0.0}
    assert "agrees with the metric on 0.0% of textvqa_val's logged answers  <- low" in calibrate.render(result)


def test_null_scores_always_go_to_the_large_model(tmp_path):
    write_jsonl(tmp_path / "s" / "d_samples_gqa.jsonl", [logged(0, "A?", "yes", "yes", exact_match=1.0),
                                                       logged(1, "B?", "no", "yes", exact_match=0.0),
                                                       logged(2, "C?", "no", "no", exact_match=1.0)])
    passed_through = {"n_visual": 0, "n_kept": 0, "layer": 2, "exited": False, "exit_score": None,
                      "small_seconds": 0.0, "large_seconds": 0.2, "batch_size": 1, "key": None, "prompt": None,
                      "small_answer": None, "large_answer": None}  # a text-only call: no answers recorded
    stats = write_jsonl(tmp_path / "st.jsonl", [record("A?", None, None, "yes"), record("B?", 0.3, "no", "yes"),
                                                passed_through, record("C?", float("nan"), "no", "no")])
    result = calibrate.calibrate([stats], [tmp_path / "s"])
    assert result["never_exit"] == 2 and result["matching"]["text_only_records"] == 1
    assert "text-only records left out (passed through without answers): 1" in calibrate.render(result)
    assert same_rows([(r["threshold"], r["share_large"], r["accuracy"]) for r in result["thresholds"]],
                     [(0.3, 2 / 3, 1.0), (None, 1.0, 2 / 3)])


@pytest.mark.parametrize("answer, target, expected", [
    ("Red.", "red", 1.0), ("the dog", "dog", 1.0), ("2.0", "2", 1.0), ("cat", "dog", 0.0),
    ("B", "B", 1.0), ("(B) a cat", "B", 1.0), ("B. cat", "B", 1.0), ("A", "B", 0.0), ("Because", "B", 0.0),
    ("nikon", str(["nikon"] * 2 + ["canon"] * 8), 2 / 3), ("canon", str(["nikon"] * 2 + ["canon"] * 8), 1.0),
    ("Total", str(["total", "sum"]), 1.0), ("avg", str(["total", "sum"]), 0.0),
])
def test_fallback_rule(answer, target, expected):
    assert calibrate.rule_score(answer, target) == pytest.approx(expected)


def test_metric_fields_of_real_tasks(tmp_path):
    """chartqa logs relaxed_overall beside its split; docvqa anls; the preferred one is used."""
    write_jsonl(tmp_path / "s" / "d_samples_chartqa.jsonl",
                [logged(0, "Value?", "12", "12", relaxed_overall=1.0, relaxed_human_split=1.0)])
    write_jsonl(tmp_path / "s" / "d_samples_docvqa_val.jsonl",
                [logged(0, "Date?", ["1 may", "may 1"], "1 May.", anls=0.9)])
    docs = calibrate.load_samples([tmp_path / "s"])
    assert {d.task: d.metric for d in docs} == {"chartqa": "relaxed_overall", "docvqa_val": "anls"}
    assert calibrate.score("1 May.", docs[1]) == (0.9, True)
    assert calibrate.score("may 1", docs[1]) == (1.0, False)


@pytest.mark.parametrize("stats_text, message", [
    ("{not json\n", "st.jsonl:1: not a JSON line"),
    (json.dumps({"exit_score": 0.5, "small_answer": "a", "large_answer": None, "prompt": "p", "key": None}) + "\n",
     "st.jsonl:1: the record lacks the small or the large model's answer: write the stats file with SGL_RECORD_BOTH=1"),
    (json.dumps({"n_visual": 3}) + "\n", "st.jsonl:1: no exit_score or large_answer: not a record of SGL_STATS_FILE"),
    (json.dumps({"exit_score": "high", "small_answer": "a", "large_answer": "b", "prompt": "p"}) + "\n",
     "exit_score must be a number or null"),
    ("", "the stats files hold no records"),
])
def test_bad_stats_give_one_clear_line(tmp_path, capsys, stats_text, message):
    write_jsonl(tmp_path / "s" / "d_samples_gqa.jsonl", [logged(0, "A?", "yes", "yes", exact_match=1.0)])
    (tmp_path / "st.jsonl").write_text(stats_text)
    assert main(["calibrate", "--stats", str(tmp_path / "st.jsonl"), "--samples", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sgl-patch calibrate: error: ") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_bad_samples_and_options_give_one_clear_line(run_files, tmp_path, capsys):
    stats, out = run_files
    cases = [
        (["--samples", str(tmp_path / "nowhere")], "logged samples"),
        (["--samples", str(stats)], "no doc_id or target: not an lmms-eval logged sample"),
        (["--samples", str(tmp_path / "empty")], "no lmms-eval logged samples (*_samples_<task>.jsonl) under"),
        (["--samples", str(out), "--target", "1.5"], "an absolute accuracy lies in [0, 1]"),
        (["--samples", str(out), "--target", "most"], "expected an accuracy such as 0.80"),
        (["--samples", str(out), "--task", "mmbench_en_dev"], "no logged samples of task 'mmbench_en_dev'"),
        (["--samples", str(out), "--metric", "anls"], "no logged sample has a numeric metric 'anls'"),
    ]
    (tmp_path / "empty").mkdir()
    for extra, message in cases:
        assert main(["calibrate", "--stats", str(stats), *extra]) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)

    unrelated = write_jsonl(tmp_path / "other.jsonl", [record("Something else entirely?", 0.5, "a", "b")])
    assert main(["calibrate", "--stats", str(unrelated), "--samples", str(out)]) == 1
    assert "none of the 1 stats records matches a logged sample (of 4)" in capsys.readouterr().err
