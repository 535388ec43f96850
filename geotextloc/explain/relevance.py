"""Relevance maps for both towers of an open_clip model (ERM, part a).

For a (text, image) pair with similarity score y (cosine of the normalised embeddings) and,
per transformer block b, its attention probabilities A_b (batch, heads, tokens, tokens):

    R = I                                                      (tokens x tokens)
    for b = s .. L-1:   R <- R + mean_heads( max(0, dy/dA_b ⊙ A_b) ) · R

(gradient-weighted attention rollout, Chefer et al.; CrossText2Loc's ERM heatmaps).
Image map: the CLS row of R over the patch tokens, reshaped to the patch grid and
bilinearly upsampled to the image size. Text map: the row of R of the token the text tower
pools (the end-of-text token: argmax of the ids for CLIP; the last/first/eos token for other
pool types) over all tokens. ``start_layer`` s defaults to the last block (-1), as the
reference; 0 accumulates over all blocks. Works at any text context length (with EPE too).

The pretrained-towers model (MobileNetV2 image tower, BERT text tower) has no image attention:
its image map is Grad-CAM at the output of the image tower's fifth stage (1/16 of the input,
16 x 16 cells at 256 px): relu(sum_c mean_hw(dy/dA_c) * A_c); its text map is gradient x
input at the word embeddings: relu(sum_d dy/dE_td * E_td) per token (:func:`towers_relevance`).

Attention probabilities exist only inside :func:`explain_mode`: it swaps each block's
``attention`` for a manual softmax(QK^T/sqrt(d) + mask) V that keeps A; outside it the blocks
run ``nn.MultiheadAttention`` with ``need_weights=False`` (the fused fast path) untouched.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn


def image_blocks(model: nn.Module) -> list[nn.Module]:
    return list(model.visual.transformer.resblocks)


def text_blocks(model: nn.Module) -> list[nn.Module]:
    tower = getattr(model, "text", model)  # CustomTextCLIP keeps it in .text, CLIP unpacks it
    return list(tower.transformer.resblocks)


def _attention_keeping_probabilities(block, store, q_x, k_x=None, v_x=None, attn_mask=None):
    """Drop-in for ``ResidualAttentionBlock.attention``: out = softmax(QK^T/sqrt(d) + M) V W_o,
    with the probabilities A stored in ``store[block]``."""
    mha: nn.MultiheadAttention = block.attn
    if torch.is_grad_enabled() and not q_x.requires_grad:  # frozen model: still need dy/dA
        q_x = q_x.detach().requires_grad_()
    k_x = q_x if k_x is None else k_x
    v_x = q_x if v_x is None else v_x
    if not mha.batch_first:  # (L, B, D) -> (B, L, D)
        q_x, k_x, v_x = (t.transpose(0, 1) for t in (q_x, k_x, v_x))
    batch, n_q, width = q_x.shape
    heads, n_k = mha.num_heads, k_x.shape[1]
    if mha.in_proj_weight is not None:
        w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    else:
        w_q, w_k, w_v = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None,) * 3

    def split(x, w, b):  # (B, L, D) -> (B, heads, L, d)
        return F.linear(x, w, b).view(batch, x.shape[1], heads, -1).transpose(1, 2)

    q, k, v = split(q_x, w_q, b_q), split(k_x, w_k, b_k), split(v_x, w_v, b_v)
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:  # nn.MultiheadAttention: True = not allowed
            attn_mask = torch.zeros_like(attn_mask, dtype=logits.dtype).masked_fill(
                attn_mask, float("-inf"))
        per_head = heads if attn_mask.dim() == 3 else 1  # (B*heads, L, S) or (L, S)
        logits = logits + attn_mask.to(logits.dtype).view(-1, per_head, n_q, n_k)
    probs = logits.softmax(dim=-1)
    store[block] = probs
    out = (probs @ v).transpose(1, 2).reshape(batch, n_q, width)
    out = mha.out_proj(out)
    return out if mha.batch_first else out.transpose(0, 1)


@contextlib.contextmanager
def explain_mode(model: nn.Module, start_layer: int = 0):
    """Within the block, the attention blocks ``start_layer..L-1`` of both towers keep their
    attention probabilities (earlier blocks keep the fast path); yields the dict
    ``{block: A}`` filled by each forward pass."""
    img, txt = image_blocks(model), text_blocks(model)
    blocks = img[start_layer % len(img):] + txt[start_layer % len(txt):]
    for block in blocks:
        if not isinstance(block, ResidualAttentionBlock):
            raise TypeError(f"relevance maps need open_clip ResidualAttentionBlocks, "
                            f"got {type(block).__name__}")
    store: dict[nn.Module, torch.Tensor] = {}
    try:
        for block in blocks:  # an instance attribute shadows the class's method
            block.attention = functools.partial(_attention_keeping_probabilities, block, store)
        yield store
    finally:
        for block in blocks:
            block.__dict__.pop("attention", None)  # back to the class's fast attention


def _rollout(probs: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """R = I;  R <- R + mean_h(max(0, grad ⊙ A)) · R  for each block given, in order."""
    batch, _, n, _ = probs[0].shape
    relevance = torch.eye(n, dtype=probs[0].dtype, device=probs[0].device).expand(batch, n, n).clone()
    for a, g in zip(probs, grads):
        cam = (g * a).clamp(min=0).mean(dim=1)  # (B, n, n)
        relevance = relevance + torch.bmm(cam, relevance)
    return relevance


def pooled_token(model: nn.Module, text: torch.Tensor) -> torch.Tensor:
    """Index of the token whose features the text tower pools, per row of ``text``."""
    tower = getattr(model, "text", None)
    pool = tower.pool_type if tower is not None else getattr(model, "text_pool_type", "argmax")
    eos = getattr(tower, "eos_id", None) if tower is not None else getattr(model, "text_eos_id", None)
    if pool == "first":
        return torch.zeros(len(text), dtype=torch.long)
    if pool == "last":
        return torch.full((len(text),), text.shape[1] - 1, dtype=torch.long)
    if pool == "eos" and eos is not None:
        return (text == eos).int().argmax(dim=-1)
    return text.argmax(dim=-1)  # 'argmax': CLIP's end-of-text token has the largest id


@dataclass
class RelevanceMaps:
    image: torch.Tensor  # (B, H, W) >= 0, at the input image size
    image_grid: torch.Tensor  # (B, grid_h, grid_w) >= 0, per patch
    text: torch.Tensor | None  # (B, context_length) >= 0, per token; None with text_map=False
    score: torch.Tensor  # (B,) cosine similarity of each pair


def relevance_maps(model: nn.Module, images: torch.Tensor, texts: torch.Tensor,
                   start_layer: int = -1, text_map: bool = True) -> RelevanceMaps:
    """Relevance maps of a batch of (image, text) pairs (pair i = images[i], texts[i]);
    ``images`` preprocessed (B, 3, H, W), ``texts`` token ids (B, context_length).

    ``text_map=False`` computes the image maps only: the text tower then runs once per
    distinct text, on its fast path and without gradients (the image map of pair i needs
    only the text's features, a constant for it). That is the same image maps at a fraction
    of the cost when one text is paired with its k candidates.
    """
    if getattr(getattr(model.visual, "trunk", None), "blocks", None) is not None:
        return towers_relevance(model, images, texts, text_map)
    was_training = model.training
    model.eval()
    img_blocks, txt_blocks = image_blocks(model), text_blocks(model)
    s_img, s_txt = start_layer % len(img_blocks), start_layer % len(txt_blocks)
    try:
        if not text_map:
            with torch.no_grad():
                distinct, inverse = torch.unique(texts, dim=0, return_inverse=True)
                fixed_text = model.encode_text(distinct, normalize=True)[inverse]
        with torch.enable_grad(), explain_mode(model, start_layer) as store:
            image_features = model.encode_image(images, normalize=True)
            text_features = model.encode_text(texts, normalize=True) if text_map else fixed_text
            score = (image_features * text_features).sum(dim=-1)  # pairs do not interact
            a_img = [store[b] for b in img_blocks[s_img:]]
            a_txt = [store[b] for b in txt_blocks[s_txt:]] if text_map else []
            grads = torch.autograd.grad(score.sum(), a_img + a_txt)
    finally:
        model.train(was_training)
    r_img = _rollout([a.detach() for a in a_img], grads[: len(a_img)])

    grid_h, grid_w = model.visual.grid_size
    patches = r_img[:, 0, -grid_h * grid_w:]  # CLS row over the patch tokens
    grid = patches.reshape(-1, grid_h, grid_w)
    image = F.interpolate(grid[:, None], size=images.shape[-2:], mode="bilinear",
                          align_corners=False)[:, 0].clamp(min=0)
    text = None
    if text_map:
        r_txt = _rollout([a.detach() for a in a_txt], grads[len(a_img):])
        rows = pooled_token(model, texts).to(r_txt.device)
        text = r_txt[torch.arange(len(texts), device=r_txt.device), rows]
    return RelevanceMaps(image=image, image_grid=grid, text=text, score=score.detach())


GRADCAM_STAGE = 4  # output of the fifth MobileNetV2 stage (96 channels, stride 16)


def _keep(store: dict, key: str):
    """Forward hook: store the output as a leaf that needs a gradient (locked towers too)."""
    def hook(module, args, output):
        output = output.detach().requires_grad_(True)
        store[key] = output
        return output
    return hook


def towers_relevance(model: nn.Module, images: torch.Tensor, texts: torch.Tensor,
                     text_map: bool = True) -> RelevanceMaps:
    """Grad-CAM image maps and gradient x input token maps of the pretrained-towers model."""
    was_training = model.training
    model.eval()
    store: dict[str, torch.Tensor] = {}
    hooks = [model.visual.trunk.blocks[GRADCAM_STAGE].register_forward_hook(_keep(store, "image"))]
    if text_map:
        embeddings = model.text.transformer.embeddings.word_embeddings
        hooks.append(embeddings.register_forward_hook(_keep(store, "text")))
    try:
        with torch.enable_grad():
            image_features = model.encode_image(images, normalize=True)
            if text_map:
                text_features = model.encode_text(texts, normalize=True)
            else:
                with torch.no_grad():
                    text_features = model.encode_text(texts, normalize=True)
            score = (image_features * text_features).sum(dim=-1)
            leaves = [store["image"]] + ([store["text"]] if text_map else [])
            grads = torch.autograd.grad(score.sum(), leaves)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    a, g = store["image"].detach(), grads[0]
    grid = (g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1).clamp(min=0)  # (B, h, w)
    image = F.interpolate(grid[:, None], size=images.shape[-2:], mode="bilinear",
                          align_corners=False)[:, 0].clamp(min=0)
    text = None
    if text_map:
        per_token = (grads[1] * store["text"].detach()).sum(dim=-1).clamp(min=0)  # (B, used length)
        text = torch.zeros(texts.shape, dtype=per_token.dtype)
        text[:, : per_token.shape[1]] = per_token
    return RelevanceMaps(image=image, image_grid=grid, text=text, score=score.detach())


def _wordpiece_relevance(text: str, tokens: torch.Tensor, relevance: torch.Tensor, tokenizer):
    """word_relevance for a WordPiece (BERT) tokenizer: '##' pieces continue a word."""
    import unicodedata

    hf = tokenizer.tokenizer
    special = set(hf.all_special_ids)

    def fold(s: str) -> str:  # what the uncased tokenizer sees: lower case, no accents
        return "".join(c for c in unicodedata.normalize("NFD", s.lower()) if unicodedata.category(c) != "Mn")

    words, folded = [], fold(text)
    spans = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", text)]
    char_rel: list[float | None] = [None] * len(folded)
    cursor = 0
    for tok, rel in zip(tokens.tolist(), relevance.tolist()):
        if tok in special:
            continue
        piece = hf.convert_ids_to_tokens(tok).removeprefix("##")
        at = folded.find(piece, cursor)
        if at >= 0 and piece:
            for i in range(at, at + len(piece)):
                char_rel[i] = rel if char_rel[i] is None else max(char_rel[i], rel)
            cursor = at + len(piece)
    if len(folded) == len(text):  # folding kept the length: map word spans directly
        for start, end, word in spans:
            vals = [r for r in char_rel[start:end] if r is not None]
            words.append((word, max(vals) if vals else None))
        return words
    return [(word, None) for _, _, word in spans]


def word_relevance(text: str, tokens: torch.Tensor, relevance: torch.Tensor,
                   tokenizer) -> list[tuple[str, float | None]]:
    """The words of ``text`` (split at whitespace, original spelling) with the largest
    relevance of their BPE tokens; None for words the model did not see (truncated).

    Needs open_clip's ``SimpleTokenizer`` (CLIP BPE: tokens end a word with ``</w>``); the
    start/end-of-text and padding tokens are left out.
    """
    if not hasattr(tokenizer, "sot_token_id"):  # a Hugging Face WordPiece tokenizer (towers model)
        return _wordpiece_relevance(text, tokens, relevance, tokenizer)
    special = {tokenizer.sot_token_id, tokenizer.eot_token_id, 0}
    lower = text.lower()
    char_rel = [None] * len(text)
    cursor, pieces, rels = 0, bytearray(), []
    for tok, rel in zip(tokens.tolist(), relevance.tolist()):
        if tok in special:
            continue
        piece = tokenizer.decoder[tok]
        pieces += bytes(tokenizer.byte_decoder[c] for c in piece.removesuffix("</w>"))
        rels.append(rel)
        if not piece.endswith("</w>"):
            continue
        word = pieces.decode("utf-8", errors="replace")
        at = lower.find(word, cursor)
        if at >= 0 and word:
            for i in range(at, at + len(word)):
                char_rel[i] = max(rels) if char_rel[i] is None else max(char_rel[i], max(rels))
            cursor = at + len(word)
        pieces, rels = bytearray(), []
    words = []
    for m in re.finditer(r"\S+", text):
        vals = [r for r in char_rel[m.start():m.end()] if r is not None]
        words.append((m.group(), max(vals) if vals else None))
    return words


def relevance_lift(heatmap, masks: dict) -> dict[str, dict[str, float]]:
    """Where a relevance map sits: per boolean mask (e.g. :func:`~geotextloc.explain.offline.map_layers`)
    its ``area`` (share of the pixels), ``share`` of the relevance inside it and
    ``lift`` = share / area (1: no preference; > 1: the map concentrates there).

    ``heatmap`` (h, w) >= 0 is resized bilinearly to the masks' size when it differs.
    """
    import numpy as np
    from PIL import Image

    h = np.asarray(heatmap.detach().cpu() if hasattr(heatmap, "detach") else heatmap, dtype=np.float32)
    size = next(iter(masks.values())).shape
    if h.shape != size:
        h = np.asarray(Image.fromarray(h).resize(size[::-1], Image.BILINEAR), dtype=np.float32)
    h = np.clip(h, 0, None)
    total = float(h.sum())
    out = {}
    for name, mask in masks.items():
        area = float(mask.mean())
        share = float(h[mask].sum()) / total if total > 0 else float("nan")
        out[name] = {"area": area, "share": share,
                     "lift": share / area if area > 0 else float("nan")}
    return out
