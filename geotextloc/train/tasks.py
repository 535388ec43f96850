"""The two papers as training tasks: what the one loop (:mod:`geotextloc.train.loop`) asks of
each, so that the loop itself knows no task.

A task owns its records, model, training dataset, locked-feature caching, loss and evaluation
score. ``task_of(cfg)`` picks it from ``cfg.task``:

- :class:`CrossText2Loc`: (tile of ``cfg.view``, text) pairs of the release's ``cfg.versions``;
  an open_clip model; open_clip's ``ClipLoss``; the CVG-Text protocol, score = R@1. The papers'
  baselines train the same way with their own loss (``cfg.loss``): SigLIP (sigmoid loss), BLIP
  (ITC + ITM; evaluated with ITM re-ranking) and ViLT (pair ranking; every candidate of the
  scope scored).
- :class:`StreetQuery` (CrossText2Loc with ``cfg.query`` street | fusion): (tile, street view
  [+ text]) pairs; a :class:`~geotextloc.models.query.QueryModel`; ``ClipLoss`` between the
  (fused) queries and the tiles; the same protocol with those queries, score = R@1.
- :class:`GeoBridge`: (drone, street, satellite, text + masks) quadruples of the GeoLoc
  manifest's ``cfg.regions`` (``missing_share`` of them lose their ``missing_view``); a
  :class:`~geotextloc.models.geobridge.GeoBridge`; ``GeoBridgeLoss(cfg.mode)``; every retrieval
  direction, score = mean R@1 of the six image directions.

Batches are ``(images, texts, masks)`` on the device; a task's loss is
``loss(model, images, texts, masks) -> scalar``.
"""

from __future__ import annotations

from geotextloc.errors import DataError
from geotextloc.models import factory
from geotextloc.models.epe import init_text_positions
from geotextloc.views import STREET


def _split(records, cfg) -> tuple[list, list]:
    train, test = [r for r in records if r.split == "train"], [r for r in records if r.split == "test"]
    return train[: cfg.train_limit or None], test[: cfg.test_limit or None]


def _create(cfg, device: str):
    built = factory.create(cfg.model, cfg.pretrained, cfg.context_length, cfg.epe, device=device,
                           image_size=cfg.image_size)
    if cfg.pretrained is None:
        init_text_positions(built[0], cfg.text_pos_init)
    return built


class CrossText2Loc:
    """Text -> satellite/OSM tile (CVG-Text)."""

    name = "crosstext2loc"

    @staticmethod
    def records(cfg) -> tuple[list, list]:
        from geotextloc.data.release import read_release

        return _split(read_release(cfg.data_root, versions=cfg.versions).records, cfg)

    @staticmethod
    def prepare(cfg, train_records: list) -> list:
        return train_records

    @staticmethod
    def build(cfg, device: str = "cpu"):
        """(model, preprocess_train, preprocess_val, tokenizer): the open_clip model, its last
        ``train_last_k`` blocks of each tower trainable (unless cached features lock it); or a
        baseline of the factory (SigLIP, BLIP, ViLT), with a loss that fits it (``cfg.loss``)."""
        factory.model_loss(cfg.model, cfg.loss)  # ConfigError before the model is built
        model, preprocess_train, preprocess_val, tokenizer = _create(cfg, device)
        if cfg.rerank_k is not None:  # BLIP: candidates its ITM head re-ranks in evaluation
            model.rerank_k = cfg.rerank_k
        if not cfg.cache_features and cfg.train_last_k is not None:  # else cached.lock freezes the towers
            model.lock_image_tower(unlocked_groups=cfg.train_last_k + 1)  # ..., last block + ln_post, proj
            model.lock_text_tower(unlocked_layers=cfg.train_last_k + 1)  # ..., last block + ln_final, proj
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        return model, preprocess_train, preprocess_val, tokenizer

    @staticmethod
    def dataset(cfg, model, records, transform, tokenizer, progress: bool):
        from geotextloc.train.data import Pairs

        return Pairs(records, cfg.view, transform, tokenizer, progress=progress,
                     cache=cfg.cache_images and not cfg.cache_features)  # cached features need no tiles

    @staticmethod
    def cache(cfg, model, dataset, dtype, progress: bool):
        """(dataset of cached inputs, the module that trains on them)."""
        from geotextloc.train import cached

        cached.lock(model, cfg.train_last_k or 0)
        return (cached.cached_pairs(cfg, model, dataset, dtype, progress=progress),
                cached.CachedTowers(model, cfg.train_last_k or 0))

    @staticmethod
    def batch(cfg, batch, device):
        """(images, texts, masks) on ``device``: word dropout on the texts (none at 0)."""
        from geotextloc.train.data import drop_tokens

        images, texts = batch
        texts = drop_tokens(texts, cfg.text_dropout)
        return images.to(device, non_blocking=True), texts.to(device), None

    @staticmethod
    def loss(cfg, rank: int, world: int):
        """``cfg.loss``, else the model's (:func:`~geotextloc.models.factory.model_loss`): InfoNCE
        (clip), SigLIP's sigmoid loss, BLIP's ITC + ITM or ViLT's pair ranking (:mod:`~geotextloc.train.losses`)."""
        from geotextloc.train import losses

        kind = factory.model_loss(cfg.model, cfg.loss)
        if kind == "clip":
            return pair_loss(losses.contrastive_loss(rank, world))
        return losses.MODEL_LOSSES[kind](rank, world)

    @staticmethod
    def evaluate(cfg, model, records, preprocess_val, tokenizer):
        """(report, score): the CVG-Text protocol on ``records``, score = R@1 of all queries."""
        from geotextloc.eval.embed import evaluate_model

        report = evaluate_model(model, records, cfg.view, preprocess_val, tokenizer,
                                scope=cfg.eval_scope, batch_size=cfg.eval_batch_size, query=cfg.query)
        return report, report.to_dict()["overall"]["R@1"]


class StreetQuery(CrossText2Loc):
    """CrossText2Loc's other query modalities: the street view alone (``query: street``, the
    Sample4Geo-style image -> tile baseline) or the street view and its text fused in one
    embedding (``query: fusion``); see :mod:`geotextloc.models.query`. Records, protocol and
    score are CrossText2Loc's (with these queries)."""

    @staticmethod
    def records(cfg) -> tuple[list, list]:
        train, test = CrossText2Loc.records(cfg)
        lacking = next((r for r in (*train, *test) if STREET not in r.images), None)
        if lacking is not None:
            raise DataError(f"record {lacking.name!r} of version {lacking.version!r} has no street view, and "
                            f"query={cfg.query} needs one in every record: drop {lacking.version} from versions")
        return train, test

    @staticmethod
    def build(cfg, device: str = "cpu"):
        """(QueryModel, tile preprocess_train, tile preprocess_val, tokenizer): every tower
        trainable but for its last ``train_last_k`` blocks (unless cached features lock it)."""
        from geotextloc.models import query

        model, preprocess_train, preprocess_val, tokenizer = query.over(_create(cfg, device), cfg.query, cfg.fusion)
        if not cfg.cache_features and cfg.train_last_k is not None:
            model.lock(cfg.train_last_k)
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        return model.to(device), preprocess_train, preprocess_val, tokenizer

    @staticmethod
    def dataset(cfg, model, records, transform, tokenizer, progress: bool):
        from geotextloc.models.query import street_transform
        from geotextloc.train.data import QueryPairs

        return QueryPairs(records, cfg.view, transform, street_transform(model.street),
                          tokenizer if cfg.query == "fusion" else None,
                          cache=cfg.cache_images and not cfg.cache_features, progress=progress)

    @staticmethod
    def cache(cfg, model, dataset, dtype, progress: bool):
        from geotextloc.train import cached

        cached.lock_queries(model, cfg.train_last_k or 0)
        return (cached.cached_queries(cfg, model, dataset, dtype, progress=progress),
                cached.CachedQueries(model, cfg.train_last_k or 0))

    @staticmethod
    def batch(cfg, batch, device):
        """(tiles, query, None) on ``device``: street views, or (street views, texts with word dropout)."""
        from geotextloc.train.data import drop_tokens

        images, query = batch
        if isinstance(query, (list, tuple)):
            street, texts = query
            query = (street.to(device, non_blocking=True), drop_tokens(texts, cfg.text_dropout).to(device))
        else:
            query = query.to(device, non_blocking=True)
        return images.to(device, non_blocking=True), query, None

    @staticmethod
    def loss(cfg, rank: int, world: int):
        from geotextloc.train.losses import contrastive_loss

        clip_loss = contrastive_loss(rank, world)
        return pair_loss(clip_loss) if cfg.query == "street" else fusion_loss(clip_loss)


class GeoBridge:
    """Drone, street view, satellite and text in one space."""

    name = "geobridge"

    @staticmethod
    def records(cfg) -> tuple[list, list]:
        from geotextloc.data.geoloc_manifest import read_geoloc

        return _split(read_geoloc(cfg.data_root, cfg.regions), cfg)

    @staticmethod
    def prepare(cfg, train_records: list) -> list:
        """Drop ``missing_view`` from ``missing_share`` of the training locations (by seed)."""
        if not cfg.missing_share:
            return train_records
        from geotextloc.data.geoloc_manifest import drop_view

        return drop_view(train_records, cfg.missing_view, cfg.missing_share, cfg.seed)

    @staticmethod
    def build(cfg, device: str = "cpu"):
        """A GeoBridge over the open_clip model (towers frozen but for their last blocks; the
        text tower entirely in image-only mode); the preprocess values are {view: transform}."""
        from geotextloc.models import geobridge

        model, preprocess_train, preprocess_val, tokenizer = geobridge.over(
            _create(cfg, device), unlocked_blocks=None if cfg.cache_features else cfg.train_last_k)
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        if cfg.mode == "image-only":  # L_img never reaches E_t: freeze it (DDP needs no unused-parameter search)
            for name, p in model.text.named_parameters():
                p.requires_grad_(name == "logit_scale")
        return model, preprocess_train, preprocess_val, tokenizer

    @staticmethod
    def dataset(cfg, model, records, transform, tokenizer, progress: bool):
        from geotextloc.train.data import Quadruples

        return Quadruples(records, transform, tokenizer, model.encoders["drone"].preprocess_cfg["size"])

    @staticmethod
    def cache(cfg, model, dataset, dtype, progress: bool):
        from geotextloc.train import cached

        cached.lock_geobridge(model, cfg.train_last_k or 0, text=cfg.mode != "image-only")
        return (cached.cached_quadruples(cfg, model, dataset, dtype, progress=progress),
                cached.CachedGeoBridge(model, cfg.train_last_k or 0))

    @staticmethod
    def batch(cfg, batch, device):
        images, texts, masks = batch
        images = {v: x.to(device, non_blocking=True) for v, x in images.items()}
        masks = {k: m.to(device) for k, m in masks.items()}
        return images, None if cfg.mode == "image-only" else texts.to(device), masks

    @staticmethod
    def loss(cfg, rank: int, world: int):
        from geotextloc.models.geobridge import GeoBridgeLoss

        return bridge_loss(GeoBridgeLoss(cfg.mode, symmetric=cfg.symmetric))

    @staticmethod
    def evaluate(cfg, model, records, preprocess_val, tokenizer):
        """(report, score): every direction on ``records``, score = mean R@1 of the six image ones."""
        from geotextloc.eval.multiview import evaluate_multiview

        report = evaluate_multiview(model, records, preprocess_val, tokenizer, scope=cfg.eval_scope,
                                    batch_size=cfg.eval_batch_size)
        return report, report.score


TASKS = {task.name: task for task in (CrossText2Loc, GeoBridge)}


def task_of(cfg):
    """The task class of ``cfg.task`` (the config schema has checked the name); CrossText2Loc
    with street or fusion queries is :class:`StreetQuery`."""
    if cfg.task == CrossText2Loc.name and cfg.query != "text":
        return StreetQuery
    return TASKS[cfg.task]


def pair_loss(clip_loss):
    """``loss(model, images, texts, masks)`` from ``clip_loss(image_features, text_features, scale)``."""
    def loss(model, images, texts, masks=None):
        image_features, text_features, logit_scale = model(images, texts)[:3]
        return clip_loss(image_features, text_features, logit_scale)
    return loss


def fusion_loss(clip_loss):
    """``loss(model, images, query, masks)`` of fusion queries: with tiles g, fused queries q and
    their text and street parts t, p (all L2-normalised),
    L = 1/3 [clip_loss(g, q) + clip_loss(g, t) + clip_loss(g, p)]."""
    def loss(model, images, query, masks=None):
        tiles, fused, scale, parts = model(images, query)
        return (clip_loss(tiles, fused, scale) + clip_loss(tiles, parts["text"], scale)
                + clip_loss(tiles, parts["street"], scale)) / 3
    return loss


def bridge_loss(geobridge_loss):
    """``loss(model, images, texts, masks)`` from ``GeoBridgeLoss(features, scale, masks)``."""
    def loss(model, images, texts, masks):
        features = model(images, texts)
        return geobridge_loss(features, features["logit_scale"], masks)
    return loss
