"""Pictures for people: sample grids with their captions, and loss curves."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import torch
from PIL import Image as PILImage, ImageDraw

from transfusion.fileio import to_pil, to_uint8


def save_image(pixels: torch.Tensor, path: str | Path) -> None:
    to_pil(pixels).save(path)


def reconstruction_grid(pixels: torch.Tensor, recon: torch.Tensor) -> PILImage.Image:
    """(B, C, H, W) originals on the top row, their reconstructions below, zoomed to >= 128 px."""
    rows = torch.cat([torch.cat(list(pixels), dim=2), torch.cat(list(recon), dim=2)], dim=1)  # (C, 2H, B*W)
    picture = PILImage.fromarray(to_uint8(rows.expand(3, -1, -1) if rows.shape[0] == 1 else rows))
    zoom = max(1, 128 // pixels.shape[-1])  # 32 px images are too small to judge
    return picture.resize((picture.width * zoom, picture.height * zoom), PILImage.Resampling.NEAREST)


def image_grid(images: torch.Tensor, labels: list[str] | None = None, columns: int = 8, scale: int = 4) -> PILImage.Image:
    """(N, 3, H, W) in [-1, 1] -> one PIL image, each tile enlarged ``scale`` times, labels under it."""
    n, _, h, w = images.shape
    tile_w, tile_h = w * scale, h * scale
    label_h = 36 if labels else 0
    columns = min(columns, n)
    rows = -(-n // columns)
    grid = PILImage.new("RGB", (columns * (tile_w + 4), rows * (tile_h + label_h + 4)), "white")
    draw = ImageDraw.Draw(grid)
    for i in range(n):
        x, y = (i % columns) * (tile_w + 4), (i // columns) * (tile_h + label_h + 4)
        tile = PILImage.fromarray(to_uint8(images[i])).resize((tile_w, tile_h), PILImage.NEAREST)
        grid.paste(tile, (x, y))
        if labels:
            width = max(8, tile_w // 6)
            draw.multiline_text((x + 1, y + tile_h + 1), "\n".join(textwrap.wrap(labels[i], width)[:3]), fill="black")
    return grid


def plot_losses(metrics_path: str | Path, out_path: str | Path) -> None:
    """Plot text and diffusion losses from ``metrics.jsonl`` into a PNG, and the process's
    resident memory where the rows carry it (``rss_mb``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "lm" in r]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    titles = {"image_ce": "image: VQ-code cross-entropy", "ddpm": "image: diffusion (epsilon) MSE",
              "flow": "image: flow (velocity) MSE"}
    image_key = next(k for k in titles if k in rows[0])
    image_title = titles[image_key]
    panels = [("lm", "text: next-token cross-entropy", "log"), (image_key, image_title, "log")]
    if all("rss_mb" in r for r in rows):
        panels.append(("rss_mb", "resident memory (MiB)", "linear"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5))
    for ax, (key, title, scale) in zip(axes, panels):
        ax.plot(steps, [r[key] for r in rows])
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_yscale(scale)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def plot_posttraining(metrics_path: str | Path, out_path: str | Path) -> None:
    """A post-training run's curves (``transfusion posttrain``'s ``metrics.jsonl``): the reward
    against wall clock and against samples drawn (each update's batch, and the held-out prompts),
    what the judge reads on the held-out prompts, and the KL to the start with the clipped share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    updates, held = [r for r in rows if "reward" in r], [r for r in rows if "heldout_reward" in r]
    if not updates:
        return
    fig, axes = plt.subplots(1, 4, figsize=(20, 3.6))
    for ax, x, label in ((axes[0], "wall_seconds", "wall clock (minutes)"), (axes[1], "samples_drawn", "samples drawn")):
        scale = 60 if x == "wall_seconds" else 1
        ax.plot([r[x] / scale for r in updates], [r["reward"] for r in updates], alpha=0.5, label="update's batch")
        ax.plot([r.get(x, 0) / scale for r in held], [r["heldout_reward"] for r in held], "o-", label="held-out prompts")
        if all("paraphrased_reward" in r for r in held):
            ax.plot([r.get(x, 0) / scale for r in held], [r["paraphrased_reward"] for r in held], "s--",
                    label="held-out, in other words")
        ax.set_xlabel(label)
        ax.set_title("reward")
        ax.legend(fontsize=8)
    for key in sorted({k for r in held for k in r if k.startswith("heldout_") and k != "heldout_reward"}):
        points = [(r.get("samples_drawn", 0), r[key]) for r in held if key in r]
        axes[2].plot(*zip(*points), "o-", label=key.removeprefix("heldout_"))
    axes[2].set_xlabel("samples drawn")
    axes[2].set_title("held-out: what the judge reads (share)")
    axes[2].legend(fontsize=7)
    steps = [r["step"] for r in updates]
    axes[3].plot(steps, [r["kl"] for r in updates], label="KL to the start (per element)")
    axes[3].plot(steps, [r["clipped"] for r in updates], label="share of ratios clipped")
    axes[3].set_xlabel("update")
    axes[3].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def edit_grid(sources: torch.Tensor, instructions: list[str], outputs: torch.Tensor, truths: torch.Tensor | None = None,
              rows: int = 16) -> PILImage.Image:
    """Edits as rows of tiles: the source (labelled with its instruction), the output, the truth."""
    n = min(rows, len(sources))
    columns = [sources[:n], outputs[:n]] + ([truths[:n]] if truths is not None else [])
    tiles = torch.stack([c[i] for i in range(n) for c in columns])
    labels = [label for i in range(n) for label in [instructions[i], "output", "truth"][: len(columns)]]
    return image_grid(tiles, labels, columns=len(columns) * 2)


def interleaved_grid(rows: list[tuple[str, list[torch.Tensor]]]) -> PILImage.Image:
    """One row per document: its images in order (black tiles where it drew fewer than the
    longest row), the first labelled with the document's text."""
    most = max([len(images) for _, images in rows] + [1])
    blank = next((torch.full_like(images[0], -1.0) for _, images in rows if images), torch.full((3, 32, 32), -1.0))
    tiles = [images[k] if k < len(images) else blank for _, images in rows for k in range(most)]
    labels = [text if k == 0 else "" for text, _ in rows for k in range(most)]
    return image_grid(torch.stack(tiles), labels, columns=most)


def save_generations(folder: str | Path, prompts: list[str], outputs: list[list], seeds: list[int],
                     info: dict) -> list[Path]:
    """Write what ``Engine.generate`` returned, one sample at a time, and say how it was made.

    Sample i becomes ``{i:03d}.png`` (``{i:03d}_{k}.png`` when it holds several images), a
    ``{i:03d}.md`` with its text and images in order when it produced text, and
    ``{i:03d}.json`` with the prompt, the seed, the text and ``info`` (checkpoint, sampler,
    steps, guidance, ...). ``grid.png`` shows every image with its prompt.
    Returns the JSON paths.
    """
    from transfusion.data.document import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written, tiles, labels = [], [], []
    for i, (prompt, out, seed) in enumerate(zip(prompts, outputs, seeds)):
        images = [s for s in out if isinstance(s, Image)]
        names = [f"{i:03d}.png"] if len(images) == 1 else [f"{i:03d}_{k}.png" for k in range(len(images))]
        parts, texts, image_names = [], [], iter(names)
        for seg in out:
            if isinstance(seg, Image):
                name = next(image_names)
                save_image(seg.pixels, folder / name)
                parts.append(f"![{name}]({name})")
                tiles.append(seg.pixels)
                labels.append(prompt)
            else:
                parts.append(seg.text)
                texts.append(seg.text)
        if texts:
            (folder / f"{i:03d}.md").write_text(f"**prompt:** {prompt}\n\n" + "\n\n".join(parts) + "\n")
        record = {"prompt": prompt, "seed": seed, "text": "".join(texts), "images": names if images else []}
        record.update((k, v) for k, v in info.items() if k not in record)
        path = folder / f"{i:03d}.json"
        path.write_text(json.dumps(record, indent=2) + "\n")
        written.append(path)
    if tiles:
        size = tuple(tiles[0].shape)
        same = [(t, lab) for t, lab in zip(tiles, labels) if tuple(t.shape) == size]
        image_grid(torch.stack([t for t, _ in same]), [lab for _, lab in same]).save(folder / "grid.png")
    return written
