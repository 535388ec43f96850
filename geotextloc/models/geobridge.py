"""GeoBridge: three view encoders and one shared text encoder in one embedding space.

GeoBridge (CVPR 2026): a location is a quadruple (x_d, x_p, x_s, t) — drone, street-view
panorama, satellite, text. View-specific image encoders E_d, E_p, E_s and a shared text
encoder E_t, all initialised from ONE CLIP model, give L2-normalised embeddings
z_d, z_p, z_s, z_t. For a batch of B,

    S_{u,v} = z_u z_vᵀ / τ                                   (τ learnable: 1/τ = exp(logit_scale))
    L(S)    = −(1/B) Σ_i log softmax_j S(i, y_i)               (InfoNCE over the rows of S)
    L_img   = ⅓ [L(S_{d,s}) + L(S_{s,p}) + L(S_{p,d})]
    L_text  = ⅓ Σ_{v∈{d,p,s}} L(S_{t,v})
    L_total = L_img + L_text

The paper's L(S) is one-directional (rows are the queries); :class:`GeoBridgeLoss` follows it
by default and symmetrises each edge (½[L(S_uv) + L(S_vu)], as CLIP does) only when asked.
The text branch is optional at inference: embedding one view needs only its encoder.

Beyond the paper, a sample may miss views (no satellite tile, no text): a boolean mask per
view. An edge (u, v) then uses the rows i where both u and v are present and the columns j
where v is present; an edge with no such row contributes nothing, and L_img / L_text average
over the edges that have pairs (⅓ when all three have).
"""

from __future__ import annotations

import copy
from typing import Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from geotextloc.errors import ConfigError
from geotextloc.views import DRONE, SATELLITE, STREET, TEXT
from geotextloc.views import GEOBRIDGE_VIEWS as VIEWS

# Edges (u, v): u are the queries (rows of S_{u,v}), v the targets (columns).
IMAGE_EDGES = ((DRONE, SATELLITE), (SATELLITE, STREET), (STREET, DRONE))
TEXT_EDGES = ((TEXT, DRONE), (TEXT, STREET), (TEXT, SATELLITE))
MODES = ("image-only", "text-only", "fused")


def _check_view(view: str) -> None:
    if view not in VIEWS:
        raise ConfigError(f"unknown view {view!r}; use one of {', '.join(VIEWS)}")


class GeoBridge(nn.Module):
    """E_d, E_p, E_s (three copies of the CLIP visual tower) + shared E_t (its text tower).

    ``clip`` is an open_clip ``CLIP``/``CustomTextCLIP`` (from ``open_clip.create_model`` or
    ``geotextloc.models.factory.create``). GeoBridge takes it over: its visual tower becomes
    E_d, E_p and E_s are deep copies of it (same initial weights), and ``clip.visual`` is set
    to None so no fourth, unused tower is trained; ``clip`` itself (text tower and
    ``logit_scale``) becomes E_t and the temperature. ``unlocked_blocks=k`` freezes all but
    the last k transformer blocks of every tower (paper: k=3 for downstream fine-tuning).
    """

    def __init__(self, clip: nn.Module, unlocked_blocks: int | None = None):
        super().__init__()
        visual = clip.visual
        if visual is None:
            raise ConfigError("the CLIP model has no visual tower (already used by a GeoBridge?)")
        clip.visual = None
        self.encoders = nn.ModuleDict(
            {DRONE: visual, STREET: copy.deepcopy(visual), SATELLITE: copy.deepcopy(visual)}
        )
        self.text = clip
        if unlocked_blocks is not None:
            self.freeze_all_but_last(unlocked_blocks)

    @property
    def logit_scale(self) -> nn.Parameter:
        """log(1/τ), learnable; shared by all edges."""
        return self.text.logit_scale

    def temperature_scale(self) -> torch.Tensor:
        """1/τ = exp(logit_scale), clamped at 100 as in CLIP."""
        return self.logit_scale.exp().clamp(max=100.0)

    def encode(self, view: str, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """z_v = E_v(x_v) / ‖E_v(x_v)‖ for view 'drone' | 'street' | 'satellite'."""
        _check_view(view)
        z = self.encoders[view](images)
        return F.normalize(z, dim=-1) if normalize else z

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """z_t = E_t(t) / ‖E_t(t)‖ (tokens from the model's open_clip tokenizer)."""
        return self.text.encode_text(tokens, normalize=normalize)

    def forward(
        self, images: Mapping[str, torch.Tensor], text: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Embeddings of the views given (and of the text, if any) + "logit_scale" (= 1/τ)."""
        out = {view: self.encode(view, x) for view, x in images.items()}
        if text is not None:
            out[TEXT] = self.encode_text(text)
        out["logit_scale"] = self.temperature_scale()
        return out

    def freeze_all_but_last(self, k: int) -> None:
        """Train only the last k blocks (+ final norm and projection) of each tower.

        Uses open_clip's own locks: ``visual.lock(unlocked_groups=k+1)`` unlocks the
        projection, [last block + ln_post] and k−1 more blocks; the text tower likewise with
        ``lock_text_tower(unlocked_layers=k+1)``. k=0 leaves only the projections trainable.
        The temperature stays trainable.
        """
        if k < 0:
            raise ConfigError(f"unlocked_blocks must be >= 0, got {k}")
        for encoder in self.encoders.values():
            encoder.lock(unlocked_groups=k + 1)
        self.text.lock_text_tower(unlocked_layers=k + 1)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for encoder in self.encoders.values():
            encoder.set_grad_checkpointing(enable)
        tower = getattr(self.text, "text", None)  # CustomTextCLIP's text tower
        if tower is not None and hasattr(tower, "set_grad_checkpointing"):
            tower.set_grad_checkpointing(enable)
        else:  # plain CLIP: its own set_grad_checkpointing would touch the removed visual tower
            self.text.transformer.grad_checkpointing = enable


class OneView(nn.Module):
    """A GeoBridge seen as a CLIP model of one image view: ``encode_image`` is E_view (and
    ``visual`` that encoder), everything else (``encode_text``, the text tower, ``logit_scale``)
    is E_t's. Every CLIP-based tool (evaluation, gallery index, search, relevance maps, ERM)
    then works on a GeoBridge checkpoint for the view asked."""

    def __init__(self, bridge: GeoBridge, view: str):
        super().__init__()
        _check_view(view)
        self.bridge, self.view = bridge, view

    @property
    def visual(self) -> nn.Module:
        return self.bridge.encoders[self.view]

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.bridge.encode(self.view, images, normalize=normalize)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.bridge.encode_text(tokens, normalize=normalize)

    def forward(self, images: torch.Tensor | None = None, text: torch.Tensor | None = None):
        image = self.encode_image(images, normalize=True) if images is not None else None
        txt = self.encode_text(text, normalize=True) if text is not None else None
        return image, txt, self.bridge.temperature_scale()

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.bridge.text, name)


def over(built, unlocked_blocks: int | None = None):
    """(GeoBridge, {view: train transform}, {view: val transform}, tokenizer) from
    ``factory.create``'s (clip, preprocess_train, preprocess_val, tokenizer)."""
    clip, preprocess_train, preprocess_val, tokenizer = built
    size = clip.visual.preprocess_cfg["size"]
    bridge = GeoBridge(clip, unlocked_blocks=unlocked_blocks)
    return bridge, view_transforms(preprocess_train, size), view_transforms(preprocess_val, size), tokenizer


def view_transforms(transform, image_size: int | tuple[int, int]) -> dict:
    """Per-view input transforms: drone and satellite tiles use ``transform`` as is; the street
    panorama (2:1) is first squashed to the square input, so the whole 360° stays in view
    (open_clip's crops would cut away a third of it)."""
    from torchvision.transforms import Compose, InterpolationMode, Resize

    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    street = Compose([Resize(size, interpolation=InterpolationMode.BICUBIC, antialias=True), transform])
    return {DRONE: transform, STREET: street, SATELLITE: transform}


def info_nce(
    z_u: torch.Tensor, z_v: torch.Tensor, scale: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor | None:
    """L(S) = −(1/|R|) Σ_{i∈R} log [exp S(i,i) / Σ_{j∈C} exp S(i,j)],  S = scale · z_u z_vᵀ.

    R (``rows``) are the samples with both views, C (``cols``) those with the target view;
    R ⊆ C, and the positive of row i is its own sample. None when R is empty.
    """
    if not bool(rows.any()):
        return None
    logits = scale * z_u[rows] @ z_v[cols].T
    target = (torch.cumsum(cols.long(), 0) - 1)[rows]  # position of sample i among C
    return F.cross_entropy(logits, target)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Rows of x from all ranks, concatenated; the backward sums every rank's gradient."""
    try:  # recent torch: the non-deprecated differentiable gather
        from torch.distributed._functional_collectives import all_gather_single_autograd
    except ImportError:  # older torch: the call open_clip's gather_features(gather_with_grad=True) makes
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x.contiguous()), dim=0)
    return all_gather_single_autograd(x.contiguous(), 0, dist.group.WORLD)


class GeoBridgeLoss(nn.Module):
    """L_total = L_img + L_text with the ablation switch ``mode``:

    'image-only' → L_img, 'text-only' → L_text, 'fused' → L_img + L_text (GeoBridge).

    Under ``torchrun`` every rank gathers the embeddings (with gradients, like open_clip's
    ``gather_features(gather_with_grad=True)``) and the masks of all ranks, so every rank sees all B·world negatives and computes the same global loss.
    The gather's backward sums the gradients of all ranks, and DDP's gradient averaging then
    gives exactly the gradients of one process on the concatenated batch. Every rank must
    pass the same keys with the same per-rank batch size (use a False mask for a missing view).
    """

    def __init__(self, mode: str = "fused", symmetric: bool = False):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"unknown GeoBridge loss mode {mode!r}; use one of {', '.join(MODES)}")
        self.mode = mode
        self.symmetric = symmetric

    def _edge(self, z, m, u, v, scale) -> torch.Tensor | None:
        if u not in z or v not in z:
            return None
        both = m[u] & m[v]
        loss = info_nce(z[u], z[v], scale, both, m[v])
        if loss is None or not self.symmetric:
            return loss
        return 0.5 * (loss + info_nce(z[v], z[u], scale, both, m[u]))

    def forward(
        self,
        features: Mapping[str, torch.Tensor],
        logit_scale: torch.Tensor,
        masks: Mapping[str, torch.Tensor] | None = None,
        output_dict: bool = False,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """``features``: {'drone'|'street'|'satellite'|'text': [b, D] L2-normalised};
        ``logit_scale``: 1/τ (already exponentiated, as ``GeoBridge.forward`` returns it);
        ``masks``: {view: bool [b]} (absent = all present). Returns L_total, or with
        ``output_dict`` {'img_loss', 'text_loss'} (those of the mode; their sum is L_total).
        """
        local = {k: v for k, v in features.items() if k in VIEWS + (TEXT,)}
        z, m = self._gather(local, masks or {})
        groups = {"image-only": ("img",), "text-only": ("text",), "fused": ("img", "text")}[self.mode]
        out: dict[str, torch.Tensor] = {}
        for group in groups:
            edges = IMAGE_EDGES if group == "img" else TEXT_EDGES
            losses = [l for u, v in edges if (l := self._edge(z, m, u, v, logit_scale)) is not None]
            out[f"{group}_loss"] = torch.stack(losses).mean() if losses else logit_scale.new_zeros(())
        # Zero-weight link to every local embedding and the temperature: encoders whose edges
        # had no pair this step still get (zero) gradients, so DDP needs no find_unused_parameters.
        first = next(iter(out))
        out[first] = out[first] + 0.0 * (logit_scale.sum() + sum(x.sum() for x in local.values()))
        return out if output_dict else sum(out.values())

    @staticmethod
    def _gather(features, masks):
        if not features:
            raise ConfigError(f"GeoBridgeLoss got no embeddings; pass some of {', '.join(VIEWS + (TEXT,))}")
        b = next(iter(features.values())).shape[0]
        z, m = {}, {}
        for key, x in features.items():
            present = masks.get(key)
            m[key] = torch.ones(b, dtype=torch.bool, device=x.device) if present is None else present.bool()
            z[key] = x
        world = _world_size()
        if world == 1:
            return z, m
        for key in sorted(z):  # same order on every rank
            z[key] = _all_gather_with_grad(z[key])
            parts = [torch.empty_like(m[key], dtype=torch.uint8) for _ in range(world)]
            dist.all_gather(parts, m[key].to(torch.uint8))
            m[key] = torch.cat(parts).bool()
        return z, m
