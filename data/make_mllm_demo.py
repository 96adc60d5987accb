"""Writes mllm_demo.json and mllm_demo_data/*.png: a tiny image SFT set in LLaMA-Factory's `mllm_demo` layout.

Each image is a coloured shape (circle, square or triangle) drawn on white; the rows ask about it in English or
Chinese, one `<image>` per image (sharegpt, `role`/`content` messages, an `images` column with paths relative to
this folder). Deterministic: the same files every run. Needs Pillow.

    python data/make_mllm_demo.py            # rewrites data/mllm_demo.json and data/mllm_demo_data/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SHAPES = [("circle", "圆形"), ("square", "正方形"), ("triangle", "三角形")]
COLOURS = [("red", "红色", (220, 40, 40)), ("green", "绿色", (40, 170, 60)), ("blue", "蓝色", (40, 80, 220)),
           ("yellow", "黄色", (230, 200, 30))]
SIZE = (96, 96)


def draw(shape: str, rgb: tuple[int, int, int]):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", SIZE, (255, 255, 255))
    pen = ImageDraw.Draw(image)
    box = (20, 20, 76, 76)
    if shape == "circle":
        pen.ellipse(box, fill=rgb)
    elif shape == "square":
        pen.rectangle(box, fill=rgb)
    else:
        pen.polygon([(48, 18), (78, 76), (18, 76)], fill=rgb)
    return image


def make_mllm_demo(folder: Path) -> list[dict]:
    images = folder / "mllm_demo_data"
    images.mkdir(parents=True, exist_ok=True)
    pictures = []  # (file, English description, Chinese description)
    for i, ((shape, shape_zh), (colour, colour_zh, rgb)) in enumerate(
            (s, c) for s in SHAPES for c in COLOURS[:2]):
        name = f"{i}.png"
        draw(shape, rgb).save(images / name)
        pictures.append((f"mllm_demo_data/{name}", f"a {colour} {shape}", f"一个{colour_zh}的{shape_zh}"))
    rows = []
    for i, (path, en, zh) in enumerate(pictures):
        user = {"role": "user", "content": "<image>What is in this image?"}
        answer = {"role": "assistant", "content": f"The image shows {en} on a white background."}
        if i % 3 == 2:  # a second, text-only turn about the same image
            follow = [{"role": "user", "content": "Is the background dark?"},
                      {"role": "assistant", "content": "No, the background is white."}]
        else:
            follow = []
        rows.append({"messages": [user, answer] + follow, "images": [path]})
        rows.append({"messages": [{"role": "user", "content": "<image>图片里有什么？"},
                                  {"role": "assistant", "content": f"图片里是白色背景上的{zh}。"}], "images": [path]})
    (first, en0, _), (second, en1, _) = pictures[0], pictures[3]
    rows.append({"messages": [{"role": "user", "content": "<image><image>Describe the two images."},
                              {"role": "assistant", "content": f"The first shows {en0}, the second {en1}."}],
                 "images": [first, second]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    rows = make_mllm_demo(args.folder)
    (args.folder / "mllm_demo.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} rows and {len(list((args.folder / 'mllm_demo_data').glob('*.png')))} images")


if __name__ == "__main__":
    main()
