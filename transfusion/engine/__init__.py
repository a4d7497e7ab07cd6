"""Generation with a KV cache: text token by token, images by diffusion, interleaved.

    engine = Engine(run.model, run.tokenizer, run.autoencoder, run.config)
    images = tasks.text_to_image(engine, ["a red circle"], Request(sampler="dpm++", steps=25)).images

The four tasks (text to image, caption, continue a document, edit) are set up once in
``tasks.py``; every front-end (the CLI, ``Pipeline``, the demo, evaluation) calls them.
``Engine.generate`` is the one batched loop underneath them.

The Engine is built of three parts, each chosen once: the objective's codec (``codec.py``:
pixels to latents or VQ codes and back), the model's forward passes against the cache
(``forward.ModelForward``) and the image maker (``images.py``), which sees the model only
through the narrow ``images.Forward`` and the plain values of ``images.MakerSettings``.

Every row of a batch is one document. Prompts are left-padded so that all rows end at the
same cache column; each call then appends the same number of columns to every row, and a
row with nothing to add that call gets padding columns, which no real position attends to.

- LM mode: one column per step; each row's chosen token (``decoding.choose_token``) is its
  next input.
- Diffusion mode (a row fed BOI; ``images.DiffusionImages``): the prefix never sees the
  image, so its keys and values stay in the cache while each denoising step runs only the
  n image positions against it. Classifier-free guidance runs its branches
  (``decoding.guidance_branches``) as extra rows of the same batch:

      conditional    the row's whole context, then BOI
      unconditional  BOS BOI (a dropped caption, as in training)
      image_only     the context's images without its text, then BOI

  eps = u + s (c - u) with one scale s; with separate text and image scales (editing-style
  prompts that hold images) eps = u + s_img (i - u) + s_txt (c - i). The finished image
  is written into the cache once, clean (at ``diffusion.CONTEXT_T``), and the row
  continues with EOI.
- Image tokens (``image.objective=tokens``, the Chameleon baseline; ``images.TokenImages``):
  after BOI the row samples the image's VQ codes one token at a time, with guidance on the
  logits (l = u + s (c - u)); outside images only text tokens are sampled.
- ``Engine(cache_prefix=False)`` recomputes every prefix at every denoising step instead:
  the reference the cache is tested and benchmarked against.
"""

from transfusion.engine.cache import PAD_DOC, KVCache
from transfusion.engine.engine import Engine, Row
from transfusion.engine.settings import Request, interactive_sampler, resolve_clip

__all__ = ["Engine", "Request", "KVCache", "Row", "PAD_DOC", "interactive_sampler", "resolve_clip"]
