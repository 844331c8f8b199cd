"""The calls of InternVL's VQA eval script, as a script the tests run unmodified under env vars.

InternVL's eval entry points (``internvl_chat/eval/vqa/evaluate_vqa.py`` and its siblings in the
OpenGVLab/InternVL repository) are not published as a package, and their imports do not load here
(``internvl.train.dataset`` needs ``cv2``, ``imageio``, ``decord``; the script needs a NCCL process
group, the repository's ``textvqa_eval`` and its dataset files).  Copying them into this project
is not allowed.  This driver makes the calls that script makes, in its order, with its arguments
(read from the repository, written here in our own code):

* ``from internvl.model.internvl_chat import InternVLChatModel`` -- the class imported from the
  repository's module path (the test builds ``internvl/model/internvl_chat/`` from the project's
  own model code of the same structure, ``sgl_patch/tiny/internvl2_code``), not through
  ``trust_remote_code``;
* ``load_model_and_tokenizer``: ``AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=True,
  use_fast=False)``, ``InternVLChatModel.from_pretrained(checkpoint, low_cpu_mem_usage=True,
  torch_dtype=torch.bfloat16, load_in_8bit=False, load_in_4bit=False).eval()``, then ``.cuda()``;
* ``image_size = config.force_image_size or config.vision_config.image_size``,
  ``use_thumbnail = config.use_thumbnail``;
* the dataset: each jsonl line's image opened as RGB, tiled by ``dynamic_preprocess`` when
  ``--dynamic`` (else one image), each tile through ``build_transform(is_train=False)`` (resize
  to ``image_size`` bicubic, to tensor, ImageNet normalisation), stacked; the question gets
  ``' Answer the question using a single word or phrase.'``; a ``DataLoader`` of batch size 1
  whose collate function concatenates the tiles;
* per batch: ``pixel_values.to(torch.bfloat16).cuda()``, ``generation_config = dict(num_beams=1,
  max_new_tokens=..., min_new_tokens=1, do_sample=False, temperature=0.0)``,
  ``model.chat(tokenizer=..., pixel_values=..., question=questions[0],
  generation_config=..., verbose=True)``;
* the results: ``{'question': ..., 'question_id': ..., 'answer': ...}`` per sample, dumped as one
  JSON list.

Left out: the distributed sampler and gather (one process: the sampler's share is every index, the
gather a copy) and the scoring against annotations (which needs the datasets).  The ``.cuda()``
calls need ``tests/legacy/cuda_on_cpu`` on ``PYTHONPATH`` on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from transformers import AutoTokenizer

from internvl.model.internvl_chat import InternVLChatModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BASE_PROMPT = "Answer the question using a single word or phrase."


def build_transform(input_size: int):
    """The eval transform: RGB, square bicubic resize, tensor, ImageNet normalisation."""
    return transforms.Compose([
        transforms.Lambda(lambda img: img if img.mode == "RGB" else img.convert("RGB")),
        transforms.Resize((input_size, input_size), interpolation=InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    ])


def _grid(width: int, height: int, tile: int, min_num: int, max_num: int) -> tuple[int, int]:
    """The (columns, rows) grid of ``min_num..max_num`` tiles whose aspect ratio is nearest the
    image's; on a tie the later (larger) grid wins when the image covers over half of its area."""
    grids = sorted({(c, r) for c in range(1, max_num + 1) for r in range(1, max_num + 1)
                    if min_num <= c * r <= max_num}, key=lambda g: g[0] * g[1])
    aspect = width / height
    best, best_gap = (1, 1), float("inf")
    for cols, rows in grids:
        gap = abs(aspect - cols / rows)
        if gap < best_gap:
            best, best_gap = (cols, rows), gap
        elif gap == best_gap and width * height > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


def dynamic_preprocess(image: Image.Image, min_num: int = 1, max_num: int = 6, image_size: int = 448,
                       use_thumbnail: bool = False) -> list[Image.Image]:
    """Tiles of ``image_size`` cut from the image resized to the chosen grid, row by row, plus a
    thumbnail of the whole image when there is more than one tile and ``use_thumbnail``."""
    cols, rows = _grid(*image.size, image_size, min_num, max_num)
    resized = image.resize((cols * image_size, rows * image_size))
    tiles = [resized.crop((c * image_size, r * image_size, (c + 1) * image_size, (r + 1) * image_size))
             for r in range(rows) for c in range(cols)]
    if use_thumbnail and len(tiles) > 1:
        tiles.append(image.resize((image_size, image_size)))
    return tiles


class VQADataset(torch.utils.data.Dataset):
    def __init__(self, test: str, prompt: str, input_size: int, dynamic_image_size: bool, use_thumbnail: bool,
                 max_num: int):
        with open(test) as f:
            self.test = f.readlines()
        self.prompt, self.input_size = prompt, input_size
        self.dynamic_image_size, self.use_thumbnail, self.max_num = dynamic_image_size, use_thumbnail, max_num
        self.transform = build_transform(input_size)

    def __len__(self):
        return len(self.test)

    def __getitem__(self, idx):
        data = json.loads(self.test[idx])
        image = Image.open(data["image"]).convert("RGB")
        images = (dynamic_preprocess(image, image_size=self.input_size, use_thumbnail=self.use_thumbnail,
                                     max_num=self.max_num) if self.dynamic_image_size else [image])
        question = data["question"] + (" " + self.prompt if self.prompt else "")
        return {"question_id": data["question_id"], "question": question,
                "pixel_values": torch.stack([self.transform(i) for i in images]),
                "annotation": data.get("answer")}


def collate_fn(batches, tokenizer):
    return (torch.cat([b["pixel_values"] for b in batches]), [b["question"] for b in batches],
            [b["question_id"] for b in batches], [b["annotation"] for b in batches])


def load_model_and_tokenizer(args):
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint, trust_remote_code=True, use_fast=False)
    model = InternVLChatModel.from_pretrained(
        args.checkpoint, low_cpu_mem_usage=True, torch_dtype=torch.bfloat16,
        load_in_8bit=False, load_in_4bit=False).eval()
    model = model.cuda()
    return model, tokenizer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--test", required=True, help="jsonl: image, question, question_id[, answer]")
    parser.add_argument("--out-file", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=10)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--dynamic", action="store_true")
    parser.add_argument("--max-num", type=int, default=6)
    args = parser.parse_args()

    model, tokenizer = load_model_and_tokenizer(args)
    image_size = model.config.force_image_size or model.config.vision_config.image_size
    dataset = VQADataset(args.test, BASE_PROMPT, image_size, args.dynamic, model.config.use_thumbnail, args.max_num)
    loader = torch.utils.data.DataLoader(dataset, sampler=range(len(dataset)), batch_size=1,
                                         num_workers=args.num_workers, pin_memory=True, drop_last=False,
                                         collate_fn=partial(collate_fn, tokenizer=tokenizer))
    outputs = []
    for pixel_values, questions, question_ids, _ in loader:
        pixel_values = pixel_values.to(torch.bfloat16).cuda()
        generation_config = dict(num_beams=1, max_new_tokens=args.max_new_tokens, min_new_tokens=1,
                                 do_sample=False, temperature=0.0)
        pred = model.chat(tokenizer=tokenizer, pixel_values=pixel_values, question=questions[0],
                          generation_config=generation_config, verbose=True)
        outputs.append({"question": questions[0], "question_id": question_ids[0], "answer": pred})
    with open(args.out_file, "w") as f:
        json.dump(outputs, f)


if __name__ == "__main__":
    main()
