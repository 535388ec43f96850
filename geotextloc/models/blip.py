"""BLIP's image-text retrieval model (transformers ``BlipForImageTextRetrieval``) as a CLIP-like
dual encoder with a matching head.

- **ITC** (the dual encoder): f = W_v v_CLS (the vision tower's class token), g = W_t t_CLS
  (the text encoder alone, no image), both L2-normalised; similarity f . g; trained with
  InfoNCE at a learnable scale exp(logit_scale) (BLIP's temperature, initialised to 1/0.07).
  ``encode_image``, ``encode_text``, ``visual`` and ``forward`` mirror open_clip's CLIP, so the
  training loop and :mod:`geotextloc.eval.embed` use it as they use CLIP.
- **ITM** (the matching head): the text encoder reads the tokens with cross-attention to the
  tile's vision tokens V; a linear head on its [CLS] output gives two logits (no match,
  match). ``match`` returns the log-odds m = l_match - l_no-match, the score that re-ranks the
  top k of each query (:mod:`geotextloc.eval.pairs`; k = ``rerank_k``).
- **Training** (``loss: itc+itm``, :func:`geotextloc.train.losses.itc_itm_loss`): BLIP's recipe,
  L = L_itc + L_itm, where L_itm is the cross-entropy of the ITM logits on the B positive pairs
  and 2B hard negatives: for each text an image, and for each image a text, drawn from the
  batch with probability softmax(s * f . g) over the others (as BLIP; with our local batch).

The wrapper owns the parts of the transformers model (``visual`` = vision tower + ITC
projection, ``text_encoder``, ``text_proj``, ``itm_head``), so a checkpoint holds each weight
once. Token ids are padded with 0 ([PAD]); the attention mask is ``tokens != 0``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

RERANK_K = 16  # candidates of each query's scope that ITM re-ranks (BLIP re-ranks 128-256 of 1k-5k images)
PAD = 0  # [PAD] of the BERT vocabulary


def trim_padding(tokens: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    """Drop the columns that are padding in every row (at the end of a padded batch).

    Positions count from 0 and padding is masked out of attention, so a BERT-style encoder's
    outputs at the kept positions are unchanged; the cost falls to the longest text's length.
    """
    used = (tokens != pad).any(dim=0).nonzero()
    keep = int(used.max()) + 1 if len(used) else 1
    return tokens[:, :keep]


class BlipVisual(nn.Module):
    """BLIP's vision tower and ITC projection: ``forward(images)`` = W_v v_CLS (not normalised)."""

    def __init__(self, vision_model: nn.Module, proj: nn.Module, interpolate_pos_encoding: bool = False):
        super().__init__()
        self.vision_model = vision_model
        self.proj = proj
        self.interpolate_pos_encoding = interpolate_pos_encoding

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1 + patches, width): the vision tower's last hidden states V (what ITM attends to)."""
        return self.vision_model(pixel_values=images,
                                 interpolate_pos_encoding=self.interpolate_pos_encoding).last_hidden_state

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.tokens(images)[:, 0])


class BlipRetrieval(nn.Module):
    """BLIP ITC dual encoder + ITM head (module docstring)."""

    single_stream = False

    def __init__(self, retrieval: nn.Module, image_size: int | tuple[int, int] | None = None,
                 rerank_k: int = RERANK_K):
        super().__init__()
        native = retrieval.config.vision_config.image_size
        size = image_size or native
        self.visual = BlipVisual(retrieval.vision_model, retrieval.vision_proj,
                                 interpolate_pos_encoding=size not in (native, (native, native)))
        self.text_encoder = retrieval.text_encoder
        self.text_proj = retrieval.text_proj
        self.itm_head = retrieval.itm_head
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.image_size = size
        self.context_length = retrieval.config.text_config.max_position_embeddings
        self.rerank_k = rerank_k

    @property
    def text_embeddings(self) -> nn.Module:
        """The text encoder's BERT-style embeddings (its positional table, for EPE)."""
        return self.text_encoder.embeddings

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """W_t t_CLS of the text encoder without the image (unimodal)."""
        tokens = trim_padding(tokens)
        hidden = self.text_encoder(input_ids=tokens, attention_mask=(tokens != PAD).long()).last_hidden_state
        features = self.text_proj(hidden[:, 0])
        return F.normalize(features, dim=-1) if normalize else features

    def image_state(self, images: torch.Tensor) -> torch.Tensor:
        """What :meth:`match` reads of a tile: its vision tokens V."""
        return self.visual.tokens(images)

    def match_logits(self, image_state: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 2) ITM logits (no match, match) of the pairs (tile state b, text b)."""
        tokens = trim_padding(tokens)
        hidden = self.text_encoder(
            input_ids=tokens, attention_mask=(tokens != PAD).long(), encoder_hidden_states=image_state,
            encoder_attention_mask=torch.ones(image_state.shape[:2], dtype=torch.long, device=image_state.device),
        ).last_hidden_state
        return self.itm_head(hidden[:, 0])

    def match(self, image_state: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B,) ITM log-odds m = l_match - l_no-match of the pairs (tile state b, text b)."""
        logits = self.match_logits(image_state, tokens)
        return logits[:, 1] - logits[:, 0]

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, matching: bool = False):
        """(image features, text features, exp(logit_scale)), features L2-normalised, as open_clip's
        CLIP; with ``matching``, also the (3B, 2) ITM logits of the positives and the hard
        negatives (module docstring) and their (3B,) labels (1 = match)."""
        states = self.visual.tokens(images)
        image_features = F.normalize(self.visual.proj(states[:, 0]), dim=-1)
        text_features = self.encode_text(tokens, normalize=True)
        scale = self.logit_scale.exp()
        if not matching:
            return image_features, text_features, scale
        batch = len(tokens)
        with torch.no_grad():  # BLIP: negatives drawn by softmax(s * similarity) over the others
            logits = scale * image_features @ text_features.T
            eye = torch.eye(batch, dtype=torch.bool, device=logits.device)
            image_for_text = torch.multinomial((F.softmax(logits.T.float(), dim=1) + 1e-4).masked_fill(eye, 0), 1)[:, 0]
            text_for_image = torch.multinomial((F.softmax(logits.float(), dim=1) + 1e-4).masked_fill(eye, 0), 1)[:, 0]
        itm = self.match_logits(torch.cat([states, states[image_for_text], states]),
                                torch.cat([tokens, tokens, tokens[text_for_image]]))
        labels = torch.cat([torch.ones(batch, dtype=torch.long), torch.zeros(2 * batch, dtype=torch.long)])
        return image_features, text_features, scale, itm, labels.to(itm.device)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each transformer layer in the backward pass (transformers' gradient checkpointing)."""
        for tower in (self.visual.vision_model, self.text_encoder):
            tower.gradient_checkpointing_enable() if enable else tower.gradient_checkpointing_disable()
