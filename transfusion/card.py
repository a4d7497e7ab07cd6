"""The model card of a checkpoint: ``README.md`` with the Hub's metadata header, the config in
brief and, when the checkpoint has been evaluated, its scores."""

from __future__ import annotations

from transfusion.config import Config


def model_card(cfg: Config, step: int, parameters: int, active: int, report: dict | None = None,
               repo_id: str | None = None) -> str:
    """Markdown with a YAML metadata header the Hub reads (library, license, pipeline, tags)."""
    m, i, d = cfg.model, cfg.image, cfg.diffusion
    header = ["---", "library_name: transfusion", "license: mit", "pipeline_tag: text-to-image",
              "tags:", "- transfusion", "- text-to-image", "- image-to-text", "- multimodal",
              f"- {d.objective}" if i.objective == "diffusion" else "- image-tokens", "---", ""]
    size = f"{parameters / 1e6:.2f}M parameters" + (f" ({active / 1e6:.2f}M active per token)" if active != parameters
                                                   else "")
    images = ("continuous latents, " + ("rectified flow" if d.objective == "flow" else "DDPM (epsilon, cosine)")
              + f", lambda {d.loss_weight:g}" if i.objective == "diffusion" else "VQ codes as tokens (Chameleon)")
    rows = [("model", f"{size}; {m.n_layers} layers, width {m.dim}, {m.n_heads} heads"
                      + (", Mixture-of-Transformers" if m.mot else "") + (f", from {m.init_from}" if m.init_from else "")),
            ("images", f"{i.size} px, autoencoder `{_short(cfg.autoencoder.name)}`, {i.adapter} adapter, patch {i.patch_size}"),
            ("image objective", images),
            ("text", f"tokenizer `{_short(cfg.data.tokenizer)}`, context {m.max_seq_len}"),
            ("data", f"`{cfg.data.dataset}`" + (f" + `{cfg.data.text_dataset}` text ({cfg.data.text_fraction:.0%})"
                                               if cfg.data.text_dataset and cfg.data.text_fraction else "")
                     + (f" + edits ({cfg.data.edit_fraction:.0%})" if cfg.data.edit_fraction else "")),
            ("trained", f"{step} steps of {cfg.data.batch_size} x {cfg.data.seq_len} tokens, lr {cfg.optim.lr:g}")]
    name = repo_id or "PATH_OR_REPO_ID"
    lines = header + [f"# Transfusion: step {step}", "",
                      "One transformer that predicts the next token for text and diffuses images (Zhou et al. 2024, "
                      "arXiv 2408.11039), trained with the `transfusion` library.", "",
                      "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    lines += _scores(report) if report else ["No evaluation yet: `transfusion eval` writes one beside the weights.", ""]
    lines += ["## Use", "", "```python", "import transfusion", "",
              f'pipe = transfusion.Pipeline.from_pretrained("{name}")',
              'image = pipe("a red circle", num_inference_steps=25, guidance_scale=3.0).images[0]',
              "caption = pipe.caption(image)", "```", "",
              f"or `transfusion generate {name} \"a red circle\" --out out/`.", ""]
    return "\n".join(lines)


def _short(spec: str) -> str:
    return spec if len(spec) <= 48 else "..." + spec[-45:]


def _scores(report: dict) -> list[str]:
    lines = ["## Evaluation", ""]
    if "t2i" in report:
        r = report["t2i"]
        lines.append(f"- text to image ({r['settings'].get('samples')} held-out captions, {r['settings'].get('sampler')} "
                     f"{r['settings'].get('steps')} steps): " + ", ".join(
                         ([f"FID {r['fid']:.1f}"] if "fid" in r else [])
                         + [f"{k} {100 * v:.0f}%" for k, v in r.get("accuracy", {}).items()]))
    if "i2t" in report:
        r = report["i2t"]
        lines.append(f"- image to text: CIDEr-D {r['cider_d']:.2f}, "
                     + ", ".join(f"{k} {100 * v:.0f}%" for k, v in r.get("accuracy", {}).items()))
    if "text" in report:
        lines.append(f"- English text perplexity {report['text']['english']['perplexity']:.2f}")
    if "edit" in report:
        m = report["edit"]["model"]["all"]
        lines.append(f"- editing: success {100 * m['success']:.0f}%, preservation {100 * m['preservation']:.0f}%")
    return lines + [""]
