"""The training losses of CrossText2Loc and its baselines, ``cfg.loss``
(:func:`geotextloc.models.factory.model_loss` picks the model's default):

- ``clip``: symmetric image-text InfoNCE with a learnable temperature, open_clip's ``ClipLoss``
  (below; CrossText2Loc, CLIP);
- ``siglip``: SigLIP's sigmoid loss (:func:`sigmoid_loss`);
- ``itc+itm``: BLIP's contrastive + matching losses (:func:`itc_itm_loss`);
- ``pairs``: ViLT's ranking of a text's tile among other tiles (:func:`pair_ranking_loss`).

InfoNCE:

For a global batch of B pairs with L2-normalised features f_i (image) and g_i (text) and
scale s = exp(logit_scale) = 1/tau:

    L = 1/2 * [ -1/B sum_i log softmax_j(s f_i . g_j)[i]  -  1/B sum_i log softmax_j(s g_i . f_j)[i] ]

Under DDP each rank holds B/W pairs. We use ``gather_with_grad=True, local_loss=True``:

- every rank all-gathers the features of all ranks *with* autograd
  (``torch.distributed.nn.all_gather``), so rank r's rows are scored against all B
  candidates; its loss L_r covers its own B/W rows, and L = mean_r L_r;
- the gather's backward sums (reduce-scatters) the gradients every rank sends to rank r's
  features, i.e. W * dL/df_r; DDP then averages over the W ranks, giving exactly dL/dtheta,
  the gradient of one process on the concatenated batch (tests/test_ddp.py checks this).

The reference code's gather went wrong: it wrote the local tensor into every rank's slot
of the gathered list, so the other GPUs' negatives were lost and the local ones counted W
times. A correct gather *without* gradient (``gather_with_grad=False``) is still not the
paper's objective: with ``local_loss`` the terms in which rank r's features serve as
negatives on the other ranks never reach rank r; without it (the local slot re-inserted)
DDP averaging leaves the towers with dL/dtheta / W but the temperature with the full dL/ds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip import ClipLoss
from open_clip.loss import SigLipLoss

from geotextloc.errors import ConfigError


def contrastive_loss(rank: int = 0, world_size: int = 1, gather_with_grad: bool = True) -> ClipLoss:
    """``loss(image_features, text_features, logit_scale)`` -> the InfoNCE above (this rank's part).

    ``gather_with_grad=False`` only exists to demonstrate the wrong gradients in tests.
    """
    return ClipLoss(
        local_loss=True,  # score local rows against all candidates: B/W x B logits, not B x B
        gather_with_grad=gather_with_grad,
        cache_labels=True,
        rank=rank,
        world_size=world_size,
    )


def sigmoid_loss(rank: int = 0, world_size: int = 1):
    """``loss(model, images, texts, masks)``: SigLIP's sigmoid loss, open_clip's ``SigLipLoss``.

    For B pairs with L2-normalised features f_i, g_j, scale t = exp(logit_scale) and bias b
    (the model's ``logit_bias``; none: 0), every pair is a binary decision, z_ij = 1 if i = j else -1:

        L = -1/B sum_i sum_j log sigmoid( z_ij (t f_i . g_j + b) )

    Under DDP the texts of the other ranks reach this rank as negatives by neighbour exchange
    (with gradients), open_clip's implementation.
    """
    siglip = SigLipLoss(rank=rank, world_size=world_size)

    def loss(model, images, texts, masks=None):
        out = model(images, texts)
        return siglip(out[0], out[1], out[2], out[3] if len(out) > 3 else None)
    return loss


def itc_itm_loss(rank: int = 0, world_size: int = 1):
    """``loss(model, images, texts, masks)``: BLIP's L = L_itc + L_itm
    (:class:`~geotextloc.models.blip.BlipRetrieval`).

    L_itc is the InfoNCE above on the ITC features (:func:`contrastive_loss`); L_itm the
    cross-entropy of the ITM logits of the B positive pairs and the 2B hard negatives the model
    draws from this rank's batch.
    """
    itc = contrastive_loss(rank, world_size)

    def loss(model, images, texts, masks=None):
        _need_negatives(texts, "BLIP's ITM loss")
        image_features, text_features, scale, itm, labels = model(images, texts, matching=True)
        return itc(image_features, text_features, scale) + F.cross_entropy(itm.float(), labels)
    return loss


def pair_ranking_loss(rank: int = 0, world_size: int = 1, negatives: int | None = None):
    """``loss(model, images, texts, masks)``: ViLT's retrieval objective
    (:class:`~geotextloc.models.vilt.ViltRetrieval`): for each text i, the scores s_i0 of its
    tile and s_i1..s_in of n other tiles of this rank's batch,

        L = -1/B sum_i log softmax(s_i0, ..., s_in)[0]

    (n = min(``negatives``, B - 1); default ViLT's 15).
    """
    from geotextloc.models.vilt import NEGATIVES

    n = NEGATIVES if negatives is None else negatives

    def loss(model, images, texts, masks=None):
        _need_negatives(texts, "ViLT's pair ranking loss")
        scores = model(images, texts, negatives=n).float()
        return F.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long, device=scores.device))
    return loss


def _need_negatives(texts, what: str) -> None:
    if len(texts) < 2:
        raise ConfigError(f"{what} draws negatives from the batch: batch_size must give each process >= 2 pairs")


MODEL_LOSSES = {"siglip": sigmoid_loss, "itc+itm": itc_itm_loss, "pairs": pair_ranking_loss}  # beside "clip"
