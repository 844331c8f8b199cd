"""InternVL2 pairs whose language models read different tokenizers (the released 1B: Qwen2's,
2B/8B/26B: InternLM2's, 4B: Phi-3's, 40B: Yi's, 76B: Llama-3's), so "1B guides 40B" works.

The small model cannot read the large one's ``input_ids``; through ``chat`` / ``batch_chat`` it is
prompted by its own copy of the method with its own tokenizer and template.  The references here
are built without that path: the small model's importance from the prompt its own tokenizer makes
(``iv.inputs``, what ``batch_chat`` hands to ``generate``), and the large model run inside
``sgl_patch.pruned`` with that importance on the prompt the large tokenizer makes.
"""

from __future__ import annotations

import threading

import pytest
import torch

import sgl_patch
from sgl_patch.tiny import internvl2 as iv
from sgl_patch.tiny.base import LARGE, SMALL

MAX_NEW = 6
QUESTIONS = ["What is this?", "Describe the image.", "How many circles are there, and which one is the largest?"]
TILES = [2, 1, 3]
# (small language model, its vocabulary) -> (large language model, its vocabulary)
PAIRS = [(("internlm2", "tiny"), ("llama", "other")),   # like InternVL2-2B guiding -40B
         (("qwen2", "other"), ("internlm2", "tiny"))]    # like InternVL2-1B guiding -26B


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module", params=PAIRS, ids=lambda p: f"{p[0][0]}-{p[0][1]}->{p[1][0]}-{p[1][1]}")
def paths(request, tmp_path_factory):
    (small_llm, small_vocabulary), (large_llm, large_vocabulary) = request.param
    root = tmp_path_factory.mktemp("cross")
    return {"small": iv.save_checkpoint(root / "small", small_llm, SMALL, 0, vocabulary=small_vocabulary),
            "large": iv.save_checkpoint(root / "large", large_llm, LARGE, 1, vocabulary=large_vocabulary)}


@pytest.fixture
def models(paths):
    return iv.load(paths["small"]), iv.load(paths["large"])


@pytest.fixture(scope="module")
def tokenizers(paths):
    return iv.load_tokenizer(paths["small"]), iv.load_tokenizer(paths["large"])


def _pixels(tiles: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(tiles, 3, iv.TILE, iv.TILE, generator=torch.Generator().manual_seed(seed))


def _config() -> dict:
    return dict(max_new_tokens=MAX_NEW, do_sample=False)


def _reference_batch_chat(small, large, tokenizers, pixels, layer, retain) -> list[str]:
    small_tokenizer, large_tokenizer = tokenizers
    small_batch = iv.inputs(small, TILES, QUESTIONS, tokenizer=small_tokenizer)
    small_batch["pixel_values"] = pixels
    importance = sgl_patch.importance(small, max_new_tokens=MAX_NEW, **small_batch)
    large_batch = iv.inputs(large, TILES, QUESTIONS, tokenizer=large_tokenizer)
    large_batch["pixel_values"] = pixels
    end = large_tokenizer.convert_tokens_to_ids("<|im_end|>")
    with sgl_patch.pruned(large, importance, layer=layer, retain=retain, prompt_ids=large_batch["input_ids"]):
        out = large.generate(**large_batch, **_config(), eos_token_id=end)
    # as batch_chat reads its answers (both templates here end a turn with <|im_end|>)
    return [text.split("<|im_end|>")[0].strip() for text in large_tokenizer.batch_decode(out, skip_special_tokens=True)]


def test_the_pair_reads_different_tokens(models, tokenizers):
    small, large = models
    assert small.language_model.config.vocab_size != large.language_model.config.vocab_size
    small_ids = iv.inputs(small, [2], QUESTIONS[:1], tokenizer=tokenizers[0])["input_ids"]
    large_ids = iv.inputs(large, [2], QUESTIONS[:1], tokenizer=tokenizers[1])["input_ids"]
    assert small.img_context_token_id != large.img_context_token_id
    assert small_ids.shape != large_ids.shape or not torch.equal(small_ids, large_ids)


def test_retain_one_gives_the_unpatched_answers(models, tokenizers, paths):
    _, large = models
    pixels = _pixels(sum(TILES))
    base_batch = large.batch_chat(tokenizers[1], pixels, QUESTIONS, _config(), num_patches_list=TILES)
    base_chat = large.chat(tokenizers[1], pixels[:2], QUESTIONS[0], _config())
    sgl_patch.apply(large, small_model=paths["small"], layer=2, retain=1.0)  # tokenizer loaded from the path
    assert large.batch_chat(tokenizers[1], pixels, QUESTIONS, _config(), num_patches_list=TILES) == base_batch
    assert large.chat(tokenizers[1], pixels[:2], QUESTIONS[0], _config()) == base_chat
    records = sgl_patch.stats(large)
    visual = [n * iv.tokens_per_tile() for n in TILES] + [2 * iv.tokens_per_tile()]
    assert [r["n_visual"] for r in records] == visual and [r["n_kept"] for r in records] == visual


def test_pruned_answers_are_those_of_the_small_models_own_prompt(models, tokenizers):
    small, large = models
    pixels = _pixels(sum(TILES), seed=1)
    sgl_patch.apply(large, small_model=small, small_tokenizer=tokenizers[0], layer=2, retain=0.25)
    got = large.batch_chat(tokenizers[1], pixels, QUESTIONS, _config(), num_patches_list=TILES)
    assert [r["n_kept"] for r in sgl_patch.stats(large)] == [n * iv.tokens_per_tile() // 4 for n in TILES]
    sgl_patch.remove(large)
    assert got == _reference_batch_chat(small, large, tokenizers, pixels, layer=2, retain=0.25)


def test_generate_with_input_ids_is_refused_and_text_only_passes_through(models, tokenizers):
    small, large = models
    batch = iv.inputs(large, [2], tokenizer=tokenizers[1])
    text = iv.inputs(large, [None], tokenizer=tokenizers[1])
    expected_text = large.generate(**text, **_config())
    sgl_patch.apply(large, small_model=small, small_tokenizer=tokenizers[0])
    with pytest.raises(ValueError, match=r"another tokenizer and cannot read these input_ids; call chat\(\)"):
        large.generate(**batch, **_config())
    assert torch.equal(large.generate(**text, **_config()), expected_text)


def test_text_only_chat_is_untouched_and_never_runs_the_small_model(models, tokenizers):
    small, large = models
    expected = large.chat(tokenizers[1], None, "Tell me a short story about a cat.", _config())
    small_forwards = []
    hook = small.language_model.register_forward_hook(lambda *_: small_forwards.append(1))
    sgl_patch.apply(large, small_model=small, small_tokenizer=tokenizers[0])
    try:
        assert large.chat(tokenizers[1], None, "Tell me a short story about a cat.", _config()) == expected
    finally:
        hook.remove()
    assert small_forwards == []


def test_early_exit_returns_the_small_models_answer_text(models, tokenizers):
    small, large = models
    pixels = _pixels(sum(TILES), seed=2)
    small_answers = small.batch_chat(tokenizers[0], pixels, QUESTIONS, _config(), num_patches_list=TILES)
    large_answers = _reference_batch_chat(small, large, tokenizers, pixels, layer=2, retain=0.25)
    assert small_answers != large_answers
    sgl_patch.apply(large, small_model=small, small_tokenizer=tokenizers[0], layer=2, retain=0.25, exit_threshold=0.0)
    assert large.batch_chat(tokenizers[1], pixels, QUESTIONS, _config(), num_patches_list=TILES) == small_answers
    scores = [r["exit_score"] for r in sgl_patch.stats(large)]
    assert all(r["exited"] and r["n_kept"] is None for r in sgl_patch.stats(large))
    # a threshold between the scores: the confident samples exit, the others get the large model's answer
    threshold = sorted(scores)[1]
    sgl_patch.apply(large, small_model=small, small_tokenizer=tokenizers[0], layer=2, retain=0.25,
                    exit_threshold=threshold)
    got = large.batch_chat(tokenizers[1], pixels, QUESTIONS, _config(), num_patches_list=TILES)
    exited = [score >= threshold for score in scores]
    assert 0 < sum(exited) < len(exited)
    assert got == [s if e else g for s, g, e in zip(small_answers, large_answers, exited)]
    assert [r["exited"] for r in sgl_patch.stats(large)[-3:]] == exited


def test_an_unknown_small_tokenizer_is_refused_before_patching(models):
    small, large = models
    small.config._name_or_path = small.name_or_path = ""  # as if built in memory: no tokenizer beside it
    with pytest.raises(ValueError, match=r"small_tokenizer=<the small model's tokenizer>"):
        sgl_patch.apply(large, small_model=small)
    assert large.__dict__.get("_sgl_state") is None


def test_remove_restores_chat_exactly(models, tokenizers):
    small, large = models
    cls = type(large)
    before = {name: cls.__dict__[name] for name in ("chat", "batch_chat", "generate")}
    sgl_patch.apply(large, small_model=small, small_tokenizer=tokenizers[0], retain=0.25)
    assert cls.__dict__["chat"] is not before["chat"]
    sgl_patch.remove(large)
    assert {name: cls.__dict__[name] for name in before} == before


def test_threads_share_one_pair(models, tokenizers):
    small, large = models
    sgl_patch.apply(large, small_model=small, small_tokenizer=tokenizers[0], layer=2, retain=0.25)
    jobs = [(_pixels(sum(TILES), seed=s), s) for s in range(4)]
    expected = {s: large.batch_chat(tokenizers[1], p, QUESTIONS, _config(), num_patches_list=TILES) for p, s in jobs}
    got, errors = {}, []

    def run(pixels, seed):
        try:
            with torch.no_grad():
                got[seed] = large.batch_chat(tokenizers[1], pixels, QUESTIONS, _config(), num_patches_list=TILES)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == expected


def test_a_small_model_with_other_tiles_is_still_refused(paths, tmp_path):
    large = iv.load(paths["large"])
    small = iv.load(iv.save_checkpoint(tmp_path / "mismatched", "internlm2", SMALL, 0, tile=32, vocabulary="other"))
    with pytest.raises(ValueError, match="force_image_size"):
        sgl_patch.apply(large, small_model=small)
