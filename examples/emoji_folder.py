"""Write a folder of captioned 64 px images to train on: the Noto colour emoji, named.

    apt-get install fonts-noto-color-emoji && pip install emoji
    python examples/emoji_folder.py --out data/emoji      # data/emoji/{train,test}/NAME.png + NAME.txt

This only makes an example folder (about 3,700 images in 20 s); bring your own instead. The
layout is the one ``transfusion train data.dataset=FOLDER`` reads: every image with a caption
file of the same name beside it. The caption is the emoji's English name ("red apple",
"waving hand: medium skin tone"); one emoji in ten, chosen by a hash of its name, is held out.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
GLYPH_PX = 109  # the one size the font's colour bitmaps come in
TEST_SHARE = 10  # one in ten names held out


def caption_of(short_name: str) -> str:
    """':waving_hand_medium_skin_tone:' style names -> 'waving hand medium skin tone'."""
    return re.sub(r"\s+", " ", short_name.strip(":").replace("_", " ")).strip()


def render(char: str, font: ImageFont.FreeTypeFont, size: int) -> Image.Image | None:
    """The emoji on white, centred in a size x size square; None when the font draws it as
    several glyphs (sequences it has no single picture for)."""
    canvas = Image.new("RGBA", (3 * GLYPH_PX, 2 * GLYPH_PX), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((GLYPH_PX // 2, GLYPH_PX // 2), char, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None or box[2] - box[0] > 1.3 * GLYPH_PX:
        return None
    glyph = canvas.crop(box)
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return square.convert("RGB").resize((size, size), Image.LANCZOS)


def main() -> None:
    import emoji  # the names; PyPI `emoji`

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write train/ and test/ into")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--font", default=FONT, help="a colour emoji font (Debian fonts-noto-color-emoji)")
    args = parser.parse_args()

    font = ImageFont.truetype(args.font, GLYPH_PX)
    written = {"train": 0, "test": 0}
    skipped = 0
    for char, data in emoji.EMOJI_DATA.items():
        if data.get("status") != emoji.STATUS["fully_qualified"]:
            continue
        caption = caption_of(data["en"])
        image = render(char, font, args.size)
        if image is None:
            skipped += 1
            continue
        digest = hashlib.sha256(caption.encode()).hexdigest()
        split = "test" if int(digest, 16) % TEST_SHARE == 0 else "train"
        folder = Path(args.out) / split
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{digest[:16]}.png")
        (folder / f"{digest[:16]}.txt").write_text(caption + "\n", encoding="utf-8")
        written[split] += 1
    print(f"wrote {written['train']} train and {written['test']} test images to {args.out} "
          f"({skipped} sequences the font draws as several glyphs left out)")


if __name__ == "__main__":
    main()
