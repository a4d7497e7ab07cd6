"""The Transfusion model: one trunk, text layers and image layers around it.

The model maps (token ids, noisy latents, timesteps) to (hidden states -> logits, noise
prediction). It never sees the noise schedule: ``transfusion.diffusion`` owns that.
"""

from __future__ import annotations

import math
import zlib
from typing import Callable, Iterable

import torch
import torch.nn as nn

from transfusion.batch import ImageGroup
from transfusion.config import ImageConfig, ModelConfig
from transfusion.model.attention import ChunkedMask, flex_block_mask, transfusion_mask
from transfusion.model.image import build_image_adapter
from transfusion.model.lora import base_name
from transfusion.model.transformer import ByModality, Transformer


def _copy(param: torch.Tensor, value: torch.Tensor) -> None:
    param.copy_(value)


class Transfusion(nn.Module):
    """The model for both image objectives (``image.objective``):

    - ``diffusion``: images are continuous latents run through the image layers and scored
      by the diffusion loss (Transfusion);
    - ``tokens``: images are ``image_codes`` discrete VQ codes appended to the text
      vocabulary (code c is token ``vocab_size + c``); no image layers, next-token loss on
      everything (the Chameleon baseline).
    """

    def __init__(self, model: ModelConfig, image: ImageConfig, vocab_size: int, latent_channels: int,
                 image_codes: int = 0, seed: int = 0):
        super().__init__()
        self.model_cfg, self.image_cfg = model, image
        dim = model.dim
        tokens_objective = image.objective == "tokens"
        if tokens_objective and image_codes < 2:
            raise ValueError("image.objective=tokens needs a VQ autoencoder's codebook (image_codes >= 2)")
        self.vocab_size = vocab_size  # text vocabulary; image codes follow it
        self.image_codes = image_codes if tokens_objective else 0
        self.latent_channels = latent_channels
        self.token_embed = nn.Embedding(vocab_size + self.image_codes, dim)
        self.trunk = Transformer(model)
        self.lm_head = nn.Linear(dim, vocab_size + self.image_codes, bias=False)
        self.tie_weights()
        self.trainable_rows = None  # freeze_text: the embedding and head rows that train
        self.image = None if tokens_objective else build_image_adapter(image, latent_channels, dim)
        if not self.token_embed.weight.is_meta:  # on the meta device: init_weights() after sharding
            self.init_weights(seed)

    @classmethod
    def build(cls, model: ModelConfig, image: ImageConfig, tokenizer, autoencoder, seed: int = 0) -> "Transfusion":
        """The model for a tokenizer and an autoencoder (a VQ one for ``image.objective=tokens``)."""
        codes = 0
        if image.objective == "tokens":
            codes = getattr(autoencoder, "codebook_size", 0)
            if not codes:
                raise ValueError(f"image.objective=tokens needs a VQ autoencoder (autoencoder.name=train or a folder "
                                 f"from `transfusion autoencoder train --vq`), got a {type(autoencoder).__name__}")
        return cls(model, image, tokenizer.vocab_size, autoencoder.latent_channels, codes, seed)

    def init_weights(self, seed: int = 0, assign: Callable[[torch.Tensor, torch.Tensor], None] = _copy) -> None:
        """Initialise every weight from a generator seeded by ``seed`` and the weight's name.

        A weight's values depend on nothing else, so a model built on the meta device and
        sharded over any number of processes starts exactly where a single-process one
        does: ``assign(param, whole_value)`` writes each value (``distributed.py`` passes
        one that keeps this process's shard). A layer with a LoRA adapter keeps its base's
        values; the adapter's ``B`` starts at zero, ``A`` as peft starts it.
        """
        residual = {f"trunk.blocks.{i}.{name}.weight" for i in range(len(self.trunk.blocks))
                    for name in ("attn.out", "mlp.down")}
        std = 0.02 / (2 * self.model_cfg.n_layers) ** 0.5  # residual projections shrink with depth (GPT-2)
        for module_name, module in self.named_modules():
            for name, param in module.named_parameters(recurse=False):
                full_name = base_name(f"{module_name}.{name}" if module_name else name)
                g = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{full_name}".encode()))
                full = torch.empty(param.shape, dtype=torch.float32)
                if ".reference_in." in f".{full_name}" or ".lora_B." in full_name:  # start adding nothing
                    nn.init.zeros_(full)  # (an edit's source enters at zero, as in InstructPix2Pix)
                elif ".lora_A." in full_name:
                    nn.init.kaiming_uniform_(full, a=math.sqrt(5), generator=g)
                elif isinstance(module, (nn.Linear, nn.Embedding)) and name == "weight":
                    plain = full_name.replace(".text.", ".").replace(".image.", ".")  # either copy of a MoT layer
                    nn.init.normal_(full, std=std if plain in residual else 0.02, generator=g)
                elif name == "bias" and isinstance(module, (nn.Linear, nn.GroupNorm)):
                    nn.init.zeros_(full)
                elif isinstance(module, (nn.RMSNorm, nn.GroupNorm)):
                    nn.init.ones_(full)
                elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):  # torch's own default
                    fan_in = math.prod(module.weight.shape[1:])
                    if name == "weight":
                        nn.init.kaiming_uniform_(full, a=math.sqrt(5), generator=g)
                    else:
                        nn.init.uniform_(full, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), generator=g)
                else:
                    raise TypeError(f"no initialisation rule for {full_name} of a {type(module).__name__}")
                with torch.no_grad():
                    assign(param, full)
        self.trunk.reset_buffers()

    def tie_weights(self) -> None:
        """With ``model.tie_embeddings`` one matrix reads and writes tokens (SmolLM, small Qwen
        models); called again after ``to_empty``, which allocates each module's weight anew."""
        if self.model_cfg.tie_embeddings:
            self.lm_head.weight = self.token_embed.weight

    def freeze_text(self, new_ids: Iterable[int] = ()) -> None:
        """LMFusion (Shi et al. 2024, arXiv 2412.15188): the text copies of a MoT trunk and the
        pretrained rows of the embedding and LM head stop training, so a text-only document is
        computed exactly as the pretrained model computed it. The rows of ``new_ids`` (BOI, EOI:
        the tokens added to its tokenizer) and of the image codes train: the model learns when
        to begin an image and how to read one's end.

        Those rows share their matrices with frozen ones: the frozen rows get exactly zero
        gradient (``embed`` and ``logits`` route it to the trainable rows only), so Adam leaves
        them as they are; ``decay_groups`` keeps weight decay off those matrices."""
        for module in self.trunk.modules():
            if isinstance(module, ByModality):
                module.text.requires_grad_(False)
        rows = sorted({*new_ids, *range(self.vocab_size, self.vocab_size + self.image_codes)})
        self.token_embed.requires_grad_(bool(rows))
        self.lm_head.requires_grad_(bool(rows))
        device = self.token_embed.weight.device
        self.trainable_rows = torch.tensor(rows, dtype=torch.long, device=device) if rows else None
        self.is_trainable_row = torch.zeros(self.token_embed.num_embeddings, dtype=torch.bool, device=device)
        self.is_trainable_row[rows] = True

    def decay_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """The trainable parameters that weight decay shrinks (matrices) and those it does not (norms,
        biases, and under ``freeze_text`` the embedding and head, whose frozen rows it would move)."""
        params = [p for p in self.parameters() if p.requires_grad]
        partly_frozen = set() if self.trainable_rows is None else {id(self.token_embed.weight), id(self.lm_head.weight)}
        decay = [p for p in params if p.dim() >= 2 and id(p) not in partly_frozen]
        return decay, [p for p in params if p.dim() < 2 or id(p) in partly_frozen]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, D); under ``freeze_text`` only the trainable rows receive gradient."""
        x = self.token_embed(tokens)
        if self.trainable_rows is None:
            return x
        return torch.where(self.is_trainable_row[tokens].unsqueeze(-1), x, x.detach())

    def no_images(self, device) -> ImageGroup:
        """An image group of zero images: the image layers run, on nothing."""
        r = self.patch_reduction
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return ImageGroup(torch.zeros(0, self.latent_channels, r, r, device=device), empty, empty.view(0, 1))

    @property
    def patch_reduction(self) -> int:
        """Latent pixels per patch side: a (h, w) latent becomes (h/r) * (w/r) tokens."""
        return 1 if self.image is None else self.image.reduction

    def num_patches(self, latent_hw: tuple[int, int]) -> int:
        h, w = latent_hw
        r = self.patch_reduction
        if h % r or w % r:
            raise ValueError(f"latent size {h}x{w} is not divisible by the patch reduction {r}")
        grid = self.image_cfg.max_grid
        if h // r > grid or w // r > grid:
            raise ValueError(f"latent size {h}x{w} makes a {h // r}x{w // r} patch grid; the model takes at most "
                             f"image.max_grid={grid} patches a side")
        return (h // r) * (w // r)

    def _mask_ids(self, image_ids: torch.Tensor | None) -> torch.Tensor | None:
        """Image ids as the mask sees them: none at all with ``image.attention=causal``."""
        if image_ids is None or self.image_cfg.attention == "bidirectional":
            return image_ids
        return torch.full_like(image_ids, -1)

    def mask(self, doc_ids, image_ids, past_doc_ids=None, past_image_ids=None) -> torch.Tensor:
        """Dense (B, 1, L, S + L) mask of L new positions over S cached and themselves."""
        return transfusion_mask(doc_ids, self._mask_ids(image_ids), past_doc_ids,
                                self._mask_ids(past_image_ids)).unsqueeze(1)

    def attention_mask(self, doc_ids: torch.Tensor, image_ids: torch.Tensor):
        if self.model_cfg.attention == "flex":
            return flex_block_mask(doc_ids, self._mask_ids(image_ids))
        if self.model_cfg.attention == "chunked":
            return ChunkedMask(doc_ids, self._mask_ids(image_ids), self.model_cfg.attention_chunk)
        return self.mask(doc_ids, image_ids)  # (B, 1, L, L)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        doc_ids: torch.Tensor,
        image_ids: torch.Tensor,
        images: list[ImageGroup] = (),
        mask=None,
        past=None,
        present=None,
        head_at: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the packed rows.

        Args:
            tokens, positions, doc_ids, image_ids: (B, L) long; ``tokens`` holds any id at
                patch positions (they are overwritten by the image tokens).
            images: the image groups whose patches fill the rows.
            mask, past, present: for cached generation (``transfusion.engine``): an explicit
                (B, 1, L, S + L) mask over S cached and L new positions, the cached (k, v)
                per layer, and a list that receives the new positions' (k, v) per layer.
            head_at: (B, L) bool: return the vocabulary logits (n, V) of these positions in
                place of the hidden states (training: the LM head runs inside forward, as
                DDP and FSDP want).
        Returns:
            hidden states (B, L, D) (``logits`` turns them into vocabulary scores) and one
            noise prediction (N, C, h, w) per image group.
        """
        B, L = tokens.shape
        x = self.embed(tokens)  # (B, L, D)
        contexts = []
        if images:
            flat = x.reshape(B * L, -1)
            for group in images:
                patch_tokens, context = self.image.encode(group.latents, group.t, group.reference)  # (N, P, D)
                flat = flat.index_put((group.index.reshape(-1),), patch_tokens.reshape(-1, flat.shape[1]))
                contexts.append(context)
            x = flat.reshape(B, L, -1)
        if mask is None:
            mask = self.attention_mask(doc_ids, image_ids)
        is_image = None
        if self.model_cfg.mot:  # MoT routing: patches, or VQ codes (tokens objective)
            is_image = (image_ids >= 0) | (tokens >= self.vocab_size)
        hidden = self.trunk(x, positions, mask, past, present, is_image=is_image)
        flat_hidden = hidden.reshape(B * L, -1)
        noise = [
            self.image.decode(flat_hidden[group.index], context)  # (N, P, D) -> (N, C, h, w)
            for group, context in zip(images, contexts)
        ]
        if head_at is not None:
            return self.logits(hidden[head_at]), noise
        return hidden, noise

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., V): the text vocabulary, then the image codes (tokens objective).
        Under ``freeze_text`` the gradient reaches only the trainable rows of the head."""
        if self.trainable_rows is None or not torch.is_grad_enabled():
            return self.lm_head(hidden)
        weight, rows = self.lm_head.weight, self.trainable_rows
        frozen = nn.functional.linear(hidden, weight.detach())  # (..., V)
        return frozen.index_copy(-1, rows, nn.functional.linear(hidden, weight[rows]))  # (..., V)

    def num_params(self, trunk_only: bool = False, active: bool = False) -> int:
        """Parameters of the model (or its trunk); with ``active``, those one token uses: one
        copy of each Mixture-of-Transformers layer (what 6 N D counts for equal-FLOPs runs)."""
        module = self.trunk if trunk_only else self
        total = sum(p.numel() for p in module.parameters())
        if active:
            total -= sum(p.numel() for m in module.modules() if isinstance(m, ByModality) for p in m.image.parameters())
        return total
