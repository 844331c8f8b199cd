"""``sgl-patch lab train``: train the lab's small and large Qwen2-VL from scratch on CPU.

Seeded and resumable: the batch of step ``s`` is drawn from ``(seed + 1000, s)`` alone, so a
resumed run sees the same data as an uninterrupted one.  What helps tiny VLMs past the plateau of
naming *a* colour in the scene (DESIGN.md section 7):

- a curriculum (``STAGES``): small scenes first (4 x 4 cells: 16 visual tokens, where attention
  to the right token carries a strong gradient) with 1-2 objects, then larger scenes and more
  objects, up to the held-out 16 x 16 grid with ``scenes.MAX_OBJECTS``;
- several questions about each image (``QUESTIONS``, one chat turn each): the image, which costs
  most of a step, teaches four answers instead of one;
- a steady learning rate (warm-up, constant, a short linear decay over the last 15% of steps);
- an auxiliary loss on every visual token: a linear head on the vision tower's merged output
  predicts the colour and shape of the object in that token's cell and the shape of the object
  in the cell to its left (or none);
- an auxiliary answer loss on every text token after the image (the question's words and the
  template's): a linear head on the last hidden state predicts the answer word there, so the
  question's own words learn to look up the objects they name (one hop) and the answer position
  only has to read them.  Both heads live outside the model, in the training state only: the
  saved model is a standard checkpoint.

The curriculum advances when the answers of the last 100 training batches are 80% right, and at
the latest by the step schedule ``LATEST``.

Every ``--save-every`` seconds the model is saved as float16 safetensors with the processor's
files in ``OUT/NAME`` and the training state (float32 weights, optimizer, head, step) in
``OUT/.train_state/NAME.pt``; held-out accuracy (first answer word, greedy) goes to
``OUT/.train_state/NAME.log`` every ``--eval-every`` steps.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from . import models, scenes
from . import processor as lab_processor

DEFAULT_STEPS = {"small": 8000, "large": 12000}
DEFAULT_LR = {"small": 3e-3, "large": 3e-3}
# stages: (cells a side, most objects per scene).  Few visual tokens first: on 16 visual tokens a
# tiny model's answers sit near chance for ~1000 steps before attention finds the queried object,
# and on 64 or 256 tokens they do not leave chance in that time
STAGES = ((4, 2), (8, 3), (8, 5), (16, 4), (16, 8), (16, 16), (16, scenes.MAX_OBJECTS))
# fraction of the steps by which stage i + 1 starts at the latest
LATEST = (0.25, 0.3, 0.4, 0.5, 0.6, 0.7)
ADVANCE_AT = 0.8    # running training accuracy that moves the curriculum on
QUESTIONS = 4       # questions asked about each training image, one chat turn each


def scheduled_stage(step: int, steps: int) -> int:
    """The stage the schedule reaches at ``step`` at the latest."""
    return sum(step >= fraction * steps for fraction in LATEST)


def training_sample(rng, cells: int, most: int, questions: int = QUESTIONS) -> dict:
    """A scene built around one question, as held-out scenes are (``scenes.make_scene``), and up to
    ``questions - 1`` more that the same scene answers (``qa``: (kind, question, answer) per turn)."""
    sample = scenes.make_scene(rng, int(rng.integers(1, most + 1)), cells=cells)
    qa = [(sample["kind"], sample["question"], sample["answer"])]
    said = set(sample["question"].split()) | {sample["answer"]}
    for i in rng.permutation(len(candidates := scenes.questions_about(sample["objects"]))):
        kind, question, answer = candidates[i]
        # an answer already said in the chat could be copied from the text, not read from the image
        if len(qa) < questions and answer not in said and question != sample["question"]:
            qa.append((kind, question, answer))
            said |= set(question.split()) | {answer}
    return dict(sample, qa=qa)


def batch(step: int, stage: int, size: int, seed: int) -> list[dict]:
    rng = np.random.default_rng([seed + 1000, step])
    cells, most = STAGES[stage]
    return [training_sample(rng, cells, most) for _ in range(size)]


def encode_dialogues(processor, samples: list[dict]):
    """Each sample's image and questions as one chat, every answer given (left-padded batch)."""
    texts = []
    for sample in samples:
        messages = []
        for turn, (_, question, answer) in enumerate(sample["qa"]):
            content = lab_processor.messages(question)[0]["content"] if turn == 0 else question
            messages += [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
        texts.append(processor.apply_chat_template(messages, tokenize=False))
    return processor(images=[s["image"] for s in samples], text=texts, return_tensors="pt", padding=True)


def answer_positions(ids, processor):
    """``[b, S]`` True where an answer word sits (right after ``<|im_start|>assistant``)."""
    import torch

    convert = processor.tokenizer.convert_tokens_to_ids
    start, assistant = convert("<|im_start|>"), convert("assistant")
    at = torch.zeros_like(ids, dtype=torch.bool)
    at[:, 2:] = (ids[:, :-2] == start) & (ids[:, 1:-1] == assistant)
    return at


def cell_labels(samples: list[dict]):
    """Per visual token (one per cell, raster order, images one after another): the colour and the
    shape of the object in its cell, and the shape of the object in the cell to its left (0: none)."""
    import torch

    colours, shapes = list(scenes.COLOURS), list(scenes.SHAPES)
    per_image = []
    for sample in samples:
        cells = sample["cells"]
        labels = torch.zeros(cells, cells, 3, dtype=torch.long)
        for o in sample["objects"]:
            labels[o["row"], o["col"], 0] = colours.index(o["colour"]) + 1
            labels[o["row"], o["col"], 1] = shapes.index(o["shape"]) + 1
        labels[:, 1:, 2] = labels[:, :-1, 1]
        per_image.append(labels.reshape(-1, 3))
    return torch.cat(per_image)


def evaluate(model, processor, samples: list[dict], batch_size: int = 50) -> dict:
    """Held-out accuracy of the first greedy answer word, overall and per question kind."""
    import torch

    model.eval()
    hits = {}
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            inputs = lab_processor.encode(processor, chunk)
            words = model(**inputs).logits[:, -1].argmax(-1)
            for sample, word in zip(chunk, processor.tokenizer.convert_ids_to_tokens(words.tolist())):
                hits.setdefault(sample["kind"], []).append(scenes.is_correct(word, sample["answer"]))
    model.train()
    result = {kind: round(float(np.mean(v)), 4) for kind, v in sorted(hits.items())}
    result["all"] = round(float(np.mean([h for v in hits.values() for h in v])), 4)
    return result


def train(*args, **kwargs) -> dict:
    """Train model ``name`` for ``steps`` into ``out`` (see ``_train``); returns held-out accuracy."""
    import torch

    with torch.enable_grad():
        return _train(*args, **kwargs)


def _train(name: str, steps: int, out, *, resume: bool = False, seed: int = 0, batch_size: int = 16,
          lr: float | None = None, aux_weight: float = 0.5, eval_every: int = 250, eval_samples: int = 300,
          save_every: float = 180.0, threads: int | None = None, stop_at: int | None = None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    lr = lr or DEFAULT_LR[name]
    out = Path(out)
    state_dir = out / ".train_state"
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path, state_path = state_dir / f"{name}.log", state_dir / f"{name}.pt"

    def log(record: dict) -> None:
        line = json.dumps(record)
        print(f"[{name}] {line}", flush=True)
        with open(log_path, "a") as f:
            f.write(line + "\n")

    processor = lab_processor.build_processor()
    model = models.build(name, seed=seed)
    hidden = model.config.text_config.hidden_size
    torch.manual_seed(seed + 1)
    head = torch.nn.ModuleDict({
        "cells": torch.nn.Linear(hidden, 1 + len(scenes.COLOURS) + 2 * (1 + len(scenes.SHAPES))),
        "answer": torch.nn.Linear(hidden, models.VOCAB)})
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    step, stage, window = 0, 0, []
    if resume and state_path.exists():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        step, stage = state["step"], state["stage"]
        log({"event": "resume", "step": step})
    else:
        n = sum(p.numel() for p in model.parameters())
        log({"event": "start", "params": n, "fp16_mb": round(2 * n / 2**20, 2), "steps": steps,
             "batch": batch_size, "lr": lr, "aux_weight": aux_weight, "seed": seed})
    held_out = scenes.make_dataset(eval_samples, seed=0)
    visual = {}
    hook = model.model.visual.register_forward_hook(lambda m, a, o: visual.__setitem__("merged", o.pooler_output))
    splits = (1 + len(scenes.COLOURS), 1 + len(scenes.SHAPES), 1 + len(scenes.SHAPES))
    warmup, decay_from = 200, int(0.85 * steps)

    def save() -> None:
        models.save(model, processor, out / name)
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "head": head.state_dict(), "optimizer": optimizer.state_dict(),
                    "step": step, "stage": stage}, tmp)
        tmp.replace(state_path)

    model.train()
    last_save, t0, recent = time.time(), time.time(), []
    end = min(steps, stop_at) if stop_at is not None else steps
    while step < end:
        scale = min(1.0, (step + 1) / warmup)
        if step >= decay_from:
            scale *= max(0.1, 1 - (step - decay_from) / max(1, steps - decay_from))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        stage = max(stage, scheduled_stage(step, steps))
        samples = batch(step, stage, batch_size, seed)
        inputs = encode_dialogues(processor, samples)
        ids = inputs["input_ids"]
        answer_at = answer_positions(ids, processor)
        end_at = torch.zeros_like(answer_at)
        end_at[:, 1:] = answer_at[:, :-1]
        labels = torch.where(answer_at | end_at, ids, -100)   # each answer word and its <|im_end|>
        output = model(**inputs, labels=labels, output_hidden_states=True)
        logits = head["cells"](visual["merged"])
        targets = cell_labels(samples)
        cells_loss = sum(torch.nn.functional.cross_entropy(part, targets[:, i])
                         for i, part in enumerate(logits.split(splits, dim=-1)))
        # text after the image: each position up to an answer predicts that answer word
        positions = torch.arange(ids.shape[1])
        after = (ids == model.config.vision_end_token_id).long().argmax(-1, keepdim=True)
        turn = answer_at.long().cumsum(1) - answer_at.long()          # answers strictly before
        n_answers = answer_at.sum(1, keepdim=True)
        text = (positions > after) & ~answer_at & ~end_at & (turn < n_answers)
        answers_of_row = torch.zeros(ids.shape[0], int(n_answers.max()), dtype=torch.long)
        for row in range(ids.shape[0]):
            answers_of_row[row, :int(n_answers[row])] = ids[row][answer_at[row]]
        answer_ids = answers_of_row.gather(1, turn.clamp(max=answers_of_row.shape[1] - 1))[text]
        early_answer_loss = torch.nn.functional.cross_entropy(head["answer"](output.hidden_states[-1][text]), answer_ids)
        loss = output.loss + aux_weight * (cells_loss + early_answer_loss)
        predicted = output.logits[:, :-1].argmax(-1)
        window.append(float((predicted[answer_at[:, 1:]] == ids[answer_at]).float().mean()))
        window = window[-100:]
        if len(window) == 100 and np.mean(window) >= ADVANCE_AT and stage < len(STAGES) - 1:
            stage, window = stage + 1, []
            log({"step": step, "event": "curriculum", "stage": stage, "cells, most objects": STAGES[stage]})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        recent.append((output.loss.item(), cells_loss.item(), early_answer_loss.item()))
        if step % 50 == 0:
            answer, cells, early = np.mean(recent, axis=0)
            log({"step": step, "loss": round(float(answer), 4), "cells_loss": round(float(cells), 4),
                 "early_answer_loss": round(float(early), 4),
                 "stage": stage, "train_acc": round(float(np.mean(window or [0])), 3), "lr": round(lr * scale, 6),
                 "steps_per_s": round(step / (time.time() - t0), 3) if not resume else None})
            recent = []
        if step % eval_every == 0 or step == end:
            log({"step": step, "held_out": evaluate(model, processor, held_out), "minutes": round((time.time() - t0) / 60, 1)})
        if time.time() - last_save > save_every or step == end:
            save()
            last_save = time.time()
    hook.remove()
    return evaluate(model, processor, held_out)


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train the lab's small and large models from scratch (CPU)",
                       description="Train the small model, then the large one (or --only one), saving float16 "
                                   "checkpoints with the processor every few minutes; --resume continues.")
    p.add_argument("--steps", type=int, default=None,
                   help=f"training steps per model (default: {DEFAULT_STEPS})")
    p.add_argument("--out", default=str(models.WEIGHTS), help="output directory (default: the package's weights)")
    p.add_argument("--only", choices=tuple(models.SIZES), help="train only this model")
    p.add_argument("--resume", action="store_true", help="continue from OUT/.train_state")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="stop at this step of the --steps schedule (curriculum and learning rate follow --steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default: {DEFAULT_LR})")
    p.add_argument("--aux-weight", type=float, default=0.5, help="weight of the auxiliary losses (per visual token; answer at the question's tokens)")
    p.add_argument("--eval-every", type=int, default=250, metavar="STEPS")
    p.add_argument("--save-every", type=float, default=180.0, metavar="SECONDS")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    for name in ([args.only] if args.only else list(models.SIZES)):
        result = train(name, args.steps or DEFAULT_STEPS[name], args.out, resume=args.resume, seed=args.seed,
                       batch_size=args.batch_size, lr=args.lr, aux_weight=args.aux_weight,
                       eval_every=args.eval_every, save_every=args.save_every, threads=args.threads,
                       stop_at=args.stop_at)
        print(f"{name}: held-out accuracy {result}")
    return 0
