"""Extended Positional Embedding (EPE) for open_clip text towers.

CLIP's text encoder has L0 = 77 learned positions; CVG-Text descriptions are longer
(mean 126 tokens). CrossText2Loc stretches the L0 x width table to N = 300 rows by 1-D
linear interpolation along the position axis, rebuilds the causal mask at N and tokenizes
at N. Ablation variants (``mode``):

- ``truncate``    no EPE: the model keeps L0 positions and texts are cut at L0 tokens.
- ``interpolate`` the paper: the whole table is interpolated to N rows.
- ``kps``         Long-CLIP's knowledge-preserved stretching: the first 20 rows are kept,
                  the remaining L0 - 20 rows are interpolated to N - 20 rows (the same
                  interpolation; Long-CLIP itself stretches 77 -> 248 by exactly 4x).
- ``random``      rows 0..L0-1 are kept, rows L0..N-1 are freshly initialised as open_clip
                  initialises a text tower (normal, std 0.01).
- ``native``      the tower's own first N pretrained rows, for a tower pre-trained with more
                  than N positions (MiniLM: 512) whose table was cut to L0 = 77 to put it in
                  CLIP's situation: the upper bound that no CLIP user has.

Two kinds of text tower carry the table: open_clip's own transformer
(``positional_embedding``, causal mask) and a Hugging Face BERT tower
(``text.transformer.embeddings.position_embeddings``, bidirectional with a padding mask).

Street-view panoramas are 2:1, so :func:`resize_visual_positional_embedding` resizes the
image tower's patch-grid embedding bicubically (the class-token row is kept).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("truncate", "interpolate", "kps", "random", "native")
POS_INITS = ("normal", "sinusoidal")  # random-init text positional tables (see sinusoidal_table)
KPS_KEEP = 20  # Long-CLIP keeps the first 20 positions (short titles live there)


def _interpolate_rows(table: torch.Tensor, n: int) -> torch.Tensor:
    """(L, width) -> (n, width) by 1-D linear interpolation along rows, align_corners=False.

    new[j] = (1 - lam) * old[i] + lam * old[i + 1],  x = (j + 0.5) * L / n - 0.5,
    i = floor(x), lam = x - i, with x clamped to [0, L - 1] (edge rows are repeated).
    """
    x = table.detach().float().T.unsqueeze(0)  # (1, width, L)
    out = F.interpolate(x, size=n, mode="linear", align_corners=False)  # (1, width, n)
    return out[0].T.to(table.dtype)


def sinusoidal_table(n: int, width: int, std: float = 0.01) -> torch.Tensor:
    """A smooth (n x width) positional table: the Transformer's sinusoids, scaled to ``std``.

    pe[p, 2i] = sin(p / 10000^(2i / width)),  pe[p, 2i + 1] = cos(p / 10000^(2i / width)),
    then pe * std / pe.std(), so it has the element scale of open_clip's normal(0, 0.01) init.

    A pre-trained CLIP table is smooth along positions (neighbouring rows are similar), which is
    what makes its linear interpolation meaningful. A small model trained for minutes hardly
    moves its table away from the random init, so for the EPE ablation the tiny profile starts
    from this table instead of noise (``text_pos_init: sinusoidal``).
    """
    position = torch.arange(n, dtype=torch.float64)[:, None]
    freq = torch.pow(10000.0, -torch.arange(0, width, 2, dtype=torch.float64) / width)
    table = torch.zeros(n, width, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: width // 2])
    return (table * (std / table.std())).float()


def smoothness(table: torch.Tensor) -> float:
    """Mean cosine similarity of neighbouring rows: near 0 for noise, near 1 for a smooth table."""
    t = F.normalize(table.detach().float(), dim=1)
    return float((t[1:] * t[:-1]).sum(dim=1).mean())


def init_text_positions(model: nn.Module, kind: str = "sinusoidal") -> nn.Module:
    """Re-initialise a random-init text tower's positional table in place (``normal`` keeps it)."""
    if kind not in POS_INITS:
        raise ValueError(f"unknown positional init {kind!r}; choose one of {', '.join(POS_INITS)}")
    if kind == "sinusoidal":
        table = positional_table(model)
        with torch.no_grad():
            table.copy_(sinusoidal_table(*table.shape).to(table))
    return model


def extend_positional_embedding(
    table: torch.Tensor, n: int, mode: str = "interpolate", native: torch.Tensor | None = None
) -> torch.Tensor:
    """The (n x width) positional table made from the (L0 x width) ``table`` by ``mode``.

    ``truncate`` returns the table unchanged (L0 rows): no extension, texts are cut at L0.
    ``native`` returns ``native[:n]``, the tower's own pretrained rows.
    """
    if mode not in MODES:
        raise ValueError(f"unknown EPE mode {mode!r}; choose one of {', '.join(MODES)}")
    l0, width = table.shape
    if mode == "native":
        if native is None or native.shape[0] < n:
            have = "no pretrained table" if native is None else f"a pretrained table of {native.shape[0]} rows"
            raise ValueError(f"EPE mode 'native' needs a tower pre-trained with >= {n} positions; this one has {have}")
        return native.detach()[:n].clone()
    if mode == "truncate" or n == l0:
        return table.detach().clone()
    if mode == "interpolate":
        return _interpolate_rows(table, n)
    if n < l0:
        raise ValueError(f"EPE mode {mode!r} extends tables; n={n} is shorter than L0={l0}")
    if mode == "kps":
        if l0 <= KPS_KEEP:
            raise ValueError(f"EPE mode 'kps' needs more than {KPS_KEEP} positions, table has {l0}")
        # new[:20] = old[:20];  new[20:] = interpolate(old[20:], n - 20)
        head = table.detach()[:KPS_KEEP].clone()
        return torch.cat([head, _interpolate_rows(table[KPS_KEEP:], n - KPS_KEEP)])
    # random: new[:L0] = old;  new[L0:] ~ N(0, 0.01^2), open_clip's TextTransformer init
    fresh = torch.empty(n - l0, width, dtype=table.dtype, device=table.device)
    nn.init.normal_(fresh, std=0.01)
    return torch.cat([table.detach().clone(), fresh])


def causal_mask(n: int) -> torch.Tensor:
    """Additive causal mask (n x n): 0 on and below the diagonal, -inf above (token i sees j <= i)."""
    return torch.full((n, n), float("-inf")).triu_(1)


def hf_embeddings(model: nn.Module) -> nn.Module | None:
    """The embeddings module of a Hugging Face BERT-style text tower, or None: open_clip's HF
    tower (``model.text.transformer.embeddings``) or a transformers baseline's
    (``model.text_embeddings``: BLIP, ViLT; :mod:`geotextloc.models.hf`)."""
    emb = getattr(model, "text_embeddings", None)
    if emb is None:
        emb = getattr(getattr(getattr(model, "text", None), "transformer", None), "embeddings", None)
    return emb if isinstance(getattr(emb, "position_embeddings", None), nn.Embedding) else None


def _text_tower(model: nn.Module) -> nn.Module:
    """The module holding the text positional embedding: ``model.text`` (CustomTextCLIP,
    SigLIP) or the CLIP model itself, whose text tower is unpacked into attributes."""
    tower = getattr(model, "text", model)
    if not isinstance(getattr(tower, "positional_embedding", None), nn.Parameter):
        raise ValueError(
            f"{type(model).__name__} has no learned text positional embedding; "
            "EPE needs an open_clip text transformer or a Hugging Face BERT-style tower"
        )
    if getattr(tower, "cls_emb", None) is not None:
        raise ValueError("EPE does not support text towers with a class token (CoCa)")
    return tower


def positional_table(model: nn.Module) -> nn.Parameter:
    """The learned (positions x width) text positional table of either kind of tower."""
    emb = hf_embeddings(model)
    return emb.position_embeddings.weight if emb is not None else _text_tower(model).positional_embedding


def text_context_length(model: nn.Module) -> int:
    """Number of text positions the model accepts (rows of its text positional table)."""
    return positional_table(model).shape[0]


def set_positional_table(model: nn.Module, table: torch.Tensor) -> nn.Module:
    """Replace the text positional table by ``table`` (n rows) and make the tower accept n tokens.

    open_clip tower: the parameter, every ``context_length`` and the causal mask at n (a
    bidirectional tower, ``attn_mask is None``, stays mask-free). BERT tower: the
    ``position_embeddings`` module, its ``position_ids``/``token_type_ids`` buffers and
    ``config.max_position_embeddings``.
    """
    old = positional_table(model)
    n = table.shape[0]
    param = nn.Parameter(table.detach().to(old.device, old.dtype).clone(), requires_grad=old.requires_grad)
    emb = hf_embeddings(model)
    if emb is not None:
        emb.position_embeddings = nn.Embedding(n, table.shape[1], _weight=param)
        device = emb.position_ids.device
        emb.position_ids = torch.arange(n, device=device).expand((1, -1))
        if hasattr(emb, "token_type_ids"):
            emb.token_type_ids = torch.zeros((1, n), dtype=torch.long, device=device)
        config = getattr(getattr(getattr(model, "text", None), "transformer", None), "config", None)
        for holder in (config, getattr(emb, "config", None)):
            if holder is not None:
                holder.max_position_embeddings = n
        if hasattr(model, "text"):
            model.text.context_length = n
        model.context_length = n
        return model
    tower = _text_tower(model)
    tower.positional_embedding = param
    for module in [model] if tower is model else [model, tower]:
        module.context_length = n
        if hasattr(module, "num_pos"):
            module.num_pos = n
        if getattr(module, "attn_mask", None) is not None:  # causal tower: mask at n
            module.attn_mask = causal_mask(n).to(module.attn_mask.device, module.attn_mask.dtype)
    return model


def apply_epe(model: nn.Module, n: int, mode: str = "interpolate", native: torch.Tensor | None = None) -> nn.Module:
    """Extend ``model``'s text tower to ``n`` positions in place and return it.

    The positional table becomes :func:`extend_positional_embedding` of the current one
    (``native``: the tower's own pretrained table, for that mode) and the tower accepts n
    tokens (:func:`set_positional_table`). With ``mode="truncate"`` the model keeps L0.
    """
    return set_positional_table(model, extend_positional_embedding(positional_table(model).data, n, mode, native))


def resize_visual_positional_embedding(model: nn.Module, grid_hw: tuple[int, int]) -> nn.Module:
    """Resize the image tower to a (rows x cols) patch grid, e.g. (16, 32) for 2:1 street views.

    The grid part of the ViT positional embedding, reshaped to (width, gh0, gw0), is resized
    bicubically (align_corners=False) to (width, gh, gw); the class-token row is kept:
    pos' = [pos_cls ; bicubic(pos_grid, (gh, gw))]. The image size becomes grid x patch.
    """
    resize_visual_grid(model.visual, grid_hw)
    return model


def visual_grid(visual: nn.Module) -> tuple[int, int] | None:
    """The (rows, cols) patch grid of a ViT image tower (open_clip's or timm's), or None for a
    convolutional tower (which takes any input size as it is)."""
    patch_embed = getattr(getattr(visual, "trunk", None), "patch_embed", None)
    if patch_embed is not None:
        return tuple(patch_embed.grid_size)
    grid = getattr(visual, "grid_size", None)
    return tuple(grid) if grid is not None and hasattr(visual, "positional_embedding") else None


def resize_visual_grid(visual: nn.Module, grid_hw: tuple[int, int]) -> nn.Module:
    """:func:`resize_visual_positional_embedding` of one image tower (``model.visual``, or a copy
    of it such as a street-view encoder)."""
    gh, gw = grid_hw
    if hasattr(visual, "trunk") and hasattr(visual.trunk, "set_input_size"):  # timm (SigLIP)
        ph, pw = visual.trunk.patch_embed.patch_size
        visual.trunk.set_input_size(img_size=(gh * ph, gw * pw))
    else:
        _resize_vit_grid(visual, (gh, gw))
        ph, pw = visual.patch_size
    visual.image_size = (gh * ph, gw * pw)
    if isinstance(getattr(visual, "preprocess_cfg", None), dict):
        visual.preprocess_cfg["size"] = visual.image_size
    return visual


def _resize_vit_grid(visual: nn.Module, grid_hw: tuple[int, int]) -> None:
    """open_clip VisionTransformer: resize its positional table to ``grid_hw``."""
    (gh, gw), (gh0, gw0) = grid_hw, visual.grid_size
    old = visual.positional_embedding
    width = old.shape[1]
    if old.shape[0] != gh0 * gw0 + 1:
        raise ValueError("expected one class-token row plus a patch grid in visual.positional_embedding")
    grid = old.detach()[1:].float().reshape(1, gh0, gw0, width).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(gh * gw, width).to(old.dtype)
    table = torch.cat([old.detach()[:1], grid])
    visual.positional_embedding = nn.Parameter(table, requires_grad=old.requires_grad)
    visual.grid_size = (gh, gw)

