"""Tile retrieval by a street view, or by a street view and its description: the query-modality
rows of CVG-Text (street image only, as Sample4Geo; image + text fusion).

:class:`QueryModel` takes over an open_clip model (``factory.create``): its image tower is the
tile encoder E_g, its text tower E_t, its temperature τ; a street-view encoder E_p is a copy of
the image tower (same pretrained weights, trained apart, as GeoBridge's view encoders). For a
batch of B places with tiles x_g, street views x_p and texts t:

    g = E_g(x_g)/‖·‖,  p = E_p(x_p)/‖·‖,  t = E_t(t)/‖·‖
    street query:  q = p
    fusion query:  q = F(t, p)   ("early" fusion: one query embedding, trained jointly)

and the loss is CLIP's symmetric InfoNCE (open_clip's ``ClipLoss``) between the queries and
the tiles: L(q, g). The fusion model adds the two single-modality terms,
L = ⅓ [L(F(t, p), g) + L(t, g) + L(p, g)], so that its text and street embeddings stay tile
queries in their own right (search answers a text, an image or both from one checkpoint) and
neither modality is left idle behind the other.

Fusion heads F (``fusion``):

- ``sum``: q = (t + p) / ‖t + p‖, no parameters;
- ``mlp``: q = (t + p + W₂ GELU(W₁ [t; p])) / ‖·‖, a residual MLP over the concatenated
  embeddings, W₂ zero-initialised so training starts from ``sum``.

The third design, late fusion (a weighted sum of the two similarity matrices of separately
trained text- and street-query models), needs no model: :mod:`geotextloc.eval.fusion`.

Street views are 2:1 panoramas or single-view photos; every street input is resized (squashed)
to one 2:1 size, so a batch stacks and the whole 360° stays in view (a crop would cut away
directions). The street encoder takes it as follows: a convolutional tower (the towers model's
MobileNetV2) runs on 2:1 inputs as it is (global pooling); a ViT gets its positional
embedding resized bicubically from the (gh, gw) patch grid to (gh, 2 gw)
(:func:`geotextloc.models.epe.resize_visual_grid`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from geotextloc.errors import ConfigError
from geotextloc.models.epe import resize_visual_grid, visual_grid
from geotextloc.views import FUSIONS, QUERIES

STREET_RATIO = 2  # street inputs are (h, 2h)


def street_tower(visual: nn.Module, ratio: int = STREET_RATIO) -> nn.Module:
    """A copy of the image tower ``visual`` that takes (h, ratio·h) street views.

    ViT (open_clip's, or timm's under open_clip): the patch grid (gh, gw) becomes (gh, ratio·gw),
    its positional embedding resized bicubically. Convolutional (timm without patches: the
    towers' MobileNetV2): only the input size changes. Other towers (e.g. a ResNet with an
    attention pool of fixed size) are a ConfigError.
    """
    tower = copy.deepcopy(visual)
    cfg = getattr(tower, "preprocess_cfg", None)
    if not isinstance(cfg, dict):
        raise ConfigError(f"{type(visual).__name__}: an image tower without open_clip's preprocess_cfg cannot "
                          "encode street views")
    grid = visual_grid(tower)
    if grid is not None:
        resize_visual_grid(tower, (grid[0], ratio * grid[1]))
    elif hasattr(getattr(tower, "trunk", None), "conv_stem") or hasattr(getattr(tower, "trunk", None), "stem"):
        size = cfg["size"]
        h = size if isinstance(size, int) else size[0]
        cfg["size"] = (h, ratio * h)
    else:
        raise ConfigError(f"{type(visual).__name__}: street queries need a ViT image tower or a convolutional "
                          "timm tower (geotextloc-minilm-mnv2)")
    return tower


def embed_dim(visual: nn.Module) -> int:
    """The width of an image tower's embeddings: open_clip ViT: ``output_dim``; timm under
    open_clip: its projection; else one blank image through the tower in eval mode."""
    if getattr(visual, "output_dim", None):
        return int(visual.output_dim)
    proj = getattr(getattr(visual, "head", None), "proj", None)
    if isinstance(proj, nn.Linear):
        return proj.out_features
    size = visual.preprocess_cfg["size"]
    was_training = visual.training
    visual.eval()  # no BatchNorm statistics from the blank image
    try:
        with torch.no_grad():
            blank = torch.zeros(1, 3, *((size, size) if isinstance(size, int) else size),
                                device=next(visual.parameters()).device)
            return int(visual(blank).shape[-1])
    finally:
        visual.train(was_training)


def street_transform(tower: nn.Module):
    """PIL image -> the street tower's (3, h, w) input: resized (squashed) to (h, w), bicubic,
    normalised with the tower's mean and std. The same for training and evaluation."""
    from torchvision.transforms import Compose, InterpolationMode, Normalize, Resize, ToTensor

    cfg = tower.preprocess_cfg
    return Compose([Resize(tuple(cfg["size"]), interpolation=InterpolationMode.BICUBIC, antialias=True),
                    ToTensor(), Normalize(cfg["mean"], cfg["std"])])


class Fusion(nn.Module):
    """F(t, p): one query embedding from L2-normalised text and street embeddings (module doc)."""

    def __init__(self, dim: int, kind: str = "mlp"):
        super().__init__()
        if kind not in FUSIONS:
            raise ConfigError(f"unknown fusion {kind!r}; choose one of {', '.join(FUSIONS)}")
        self.kind = kind
        self.mlp = None
        if kind == "mlp":
            self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, dim))
            nn.init.zeros_(self.mlp[2].weight)  # starts as the normalised sum
            nn.init.zeros_(self.mlp[2].bias)

    def forward(self, text: torch.Tensor, street: torch.Tensor) -> torch.Tensor:
        fused = text + street  # q = t + p (+ W2 GELU(W1 [t; p]))
        if self.mlp is not None:
            fused = fused + self.mlp(torch.cat([text, street], dim=-1))
        return F.normalize(fused, dim=-1)


class QueryModel(nn.Module):
    """E_g (``visual``: the tiles), E_t (the text tower), E_p (``street``) and, for fusion
    queries, F (``fuse``). Everything not found here is the CLIP model's (``visual``, ``text``,
    ``logit_scale``, ``encode_text`` ...), so every CLIP-based tool (gallery index, text
    evaluation, memoised embedding) works on it unchanged."""

    def __init__(self, clip: nn.Module, query: str, fusion: str = "mlp"):
        super().__init__()
        if query not in QUERIES[1:]:
            raise ConfigError(f"QueryModel is for street or fusion queries, not {query!r}")
        self.clip = clip
        self.query = query
        self.street = street_tower(clip.visual)
        self.fuse = Fusion(embed_dim(clip.visual), fusion) if query == "fusion" else None
        if query == "street":  # no loss term reaches E_t: frozen (DDP then needs no unused-parameter search)
            for name, param in clip.named_parameters():
                param.requires_grad_(name.startswith("visual.") or name == "logit_scale")

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("clip"), name)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.clip.encode_image(images, normalize=normalize)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.clip.encode_text(tokens, normalize=normalize)

    def encode_street(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """E_p(x_p), street views at the tower's 2:1 size (:func:`street_transform`)."""
        features = self.street(images)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, images: torch.Tensor, query):
        """(tile features, query features, 1/τ[, {"text": t, "street": p}]): ``query`` is a batch
        of street views, or (street views, text tokens) for fusion queries; all L2-normalised."""
        tiles = self.encode_image(images, normalize=True)
        scale = self.clip.logit_scale.exp()
        if self.query == "street":
            return tiles, self.encode_street(query, normalize=True), scale
        street, tokens = query
        parts = {"text": self.encode_text(tokens, normalize=True), "street": self.encode_street(street, normalize=True)}
        return tiles, self.fuse(parts["text"], parts["street"]), scale, parts

    def lock(self, unlocked: int) -> None:
        """Train only the last ``unlocked`` blocks (+ final norm and projection) of each tower,
        with open_clip's locks (as CrossText2Loc's ``train_last_k``); the fusion head trains."""
        self.clip.visual.lock(unlocked_groups=unlocked + 1)
        self.street.lock(unlocked_groups=unlocked + 1)
        if self.query == "fusion":
            self.clip.lock_text_tower(unlocked_layers=unlocked + 1)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.clip.set_grad_checkpointing(enable)
        self.street.set_grad_checkpointing(enable)


def over(built, query: str, fusion: str = "mlp"):
    """(QueryModel, preprocess_train, preprocess_val, tokenizer) from ``factory.create``'s
    (clip, preprocess_train, preprocess_val, tokenizer); the transforms stay the tiles'
    (:func:`street_transform` of ``model.street`` gives the street views')."""
    clip, preprocess_train, preprocess_val, tokenizer = built
    return QueryModel(clip, query, fusion), preprocess_train, preprocess_val, tokenizer

