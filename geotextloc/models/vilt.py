"""ViLT's image-text retrieval model (transformers ``ViltForImageAndTextRetrieval``): one
transformer reads the text tokens and the tile's patches together (single stream) and a linear
head on its pooled output gives one score s = f(text, tile) per pair.

There is no tile embedding to search with, so ViLT is evaluated within the protocol's scope
only: every candidate of each query is scored (:mod:`geotextloc.eval.pairs`).

Training (``loss: pairs``, :func:`geotextloc.train.losses.pair_ranking_loss`): ViLT's
retrieval objective with our queries: for each text i of the batch, its tile and n other tiles
of the batch drawn at random (n = min(15, B - 1), ViLT's 15) are scored, and
L = -1/B sum_i log softmax(s_i0, s_i1, ..., s_in)[0], the cross-entropy of finding the true tile.

Patches: transformers' ViLT embeds patches with a random permutation of them even in
evaluation (a sampler meant for padded images of varied size). Our tiles are whole images of
one size, so :meth:`ViltRetrieval.image_state` embeds every patch in order (patch projection +
the patch-grid positions, resized bilinearly as ViLT does, + the image [CLS]): the same set of
inputs, deterministic, and computed once per tile when many texts are scored against it.
Token ids are padded with 0 ([PAD]); the attention mask is ``tokens != 0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from geotextloc.models.blip import PAD, trim_padding

NEGATIVES = 15  # other tiles scored with each text in training (ViLT samples 15 negatives)


class ViltRetrieval(nn.Module):
    """ViLT pair scorer (module docstring)."""

    single_stream = True

    def __init__(self, retrieval: nn.Module, image_size: int | tuple[int, int] | None = None):
        super().__init__()
        self.vilt = retrieval.vilt
        self.rank_output = retrieval.rank_output
        self.image_size = image_size or retrieval.config.image_size
        self.context_length = retrieval.config.max_position_embeddings

    @property
    def text_embeddings(self) -> nn.Module:
        """The BERT-style text embeddings (its positional table, for EPE)."""
        return self.vilt.embeddings.text_embeddings

    def image_state(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1 + patches, width): [CLS] and every patch of each image with its position, in order."""
        emb, config = self.vilt.embeddings, self.vilt.config
        x = emb.patch_embeddings(images)  # (B, width, h, w)
        width, h, w = x.shape[1:]
        grid = config.image_size // config.patch_size
        spatial = emb.position_embeddings[:, 1:, :].transpose(1, 2).reshape(1, width, grid, grid)
        positions = F.interpolate(spatial, size=(h, w), mode="bilinear", align_corners=True)
        patches = (x + positions).flatten(2).transpose(1, 2)
        cls = (emb.cls_token + emb.position_embeddings[:, :1]).expand(len(images), -1, -1)
        return torch.cat([cls, patches], dim=1)

    def match(self, image_state: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B,) scores s of the pairs (tile state b, text b)."""
        tokens = trim_padding(tokens)
        out = self.vilt(
            input_ids=tokens, attention_mask=(tokens != PAD).long(),
            image_embeds=self.vilt.embeddings.dropout(image_state),
            pixel_mask=torch.ones(image_state.shape[:2], dtype=torch.long, device=image_state.device),
        )
        return self.rank_output(out.pooler_output)[:, 0]

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, negatives: int = 0) -> torch.Tensor:
        """(B, 1 + n) scores: column 0 text b with its own tile, columns 1..n text b with n other
        tiles of the batch drawn at random without repetition (n = min(negatives, B - 1))."""
        batch = len(tokens)
        n = min(negatives, batch - 1)
        states = self.image_state(images)
        draw = torch.rand(batch, batch, device=states.device).fill_diagonal_(-1.0)  # never the own tile
        others = draw.topk(n, dim=1).indices if n else torch.zeros(batch, 0, dtype=torch.long, device=states.device)
        tiles = torch.cat([torch.arange(batch, device=states.device)[:, None], others], dim=1)  # (B, 1 + n)
        scores = self.match(states[tiles.reshape(-1)], tokens.repeat_interleave(1 + n, dim=0))
        return scores.reshape(batch, 1 + n)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each transformer layer in the backward pass (transformers' gradient checkpointing)."""
        self.vilt.gradient_checkpointing_enable() if enable else self.vilt.gradient_checkpointing_disable()
