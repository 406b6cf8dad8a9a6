"""Sentence-embedding pooling and the losses of the embed task, each returning a *sum* over rows.

Multiple negatives ranking (in-batch negatives; Henderson et al. 2017, https://arxiv.org/abs/1705.00652; the
InfoNCE form of sentence-transformers' MultipleNegativesRankingLoss). Query i's positive is document i, every
other document of the batch is a negative:

    loss_sum = sum_i -log( exp(s * cos(q_i, d_i)) / sum_j exp(s * cos(q_i, d_j)) ),   s = scale (20)

A document that is the positive of two rows of one batch is not a negative for either: that entry is masked.
Hard negatives (mined, see tuneforge.index.mine) are extra document columns after the B positives: the row's
softmax then runs over B + B*k documents (sentence-transformers' MNRL on (anchor, positive, negative) triplets).

CoSENT (Su 2022, https://kexue.fm/archives/8847; sentence-transformers' CoSENTLoss). For scored pairs, every
pair (i, j) whose gold similarity y_i > y_j should also have cos_i > cos_j:

    loss = log(1 + sum_{y_i > y_j} exp(s * (cos_j - cos_i)))

It is one log-sum-exp over the whole batch, not a sum over rows, so `loss_sum` returns it multiplied by the
batch size (the loop divides by the number of rows again). Cosine regression (`cosine`) is the plain
sum_i (cos_i - y_i)^2 with y scaled to [0, 1].

AnglE (`angle`; Li & Li 2023, https://arxiv.org/abs/2309.12871; sentence-transformers' AnglELoss) is CoSENT with
the cosine replaced by an angle similarity that keeps a gradient where the cosine saturates. Each embedding is
read as a complex vector z (first half real parts, second half imaginary parts; an odd dimension is padded with
a zero), and with <z, w> = sum_k z_k conj(w_k):

    angle(u, v) = | Re<z_u, z_v> + Im<z_u, z_v> | / (|u| |v|)

The real part alone is the cosine. Evaluation and search still compare embeddings by cosine.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...models.pooling import mean_pool, pool  # noqa: F401 - the losses' inputs; index/ encodes the same way


def multiple_negatives_ranking(queries: torch.Tensor, docs: torch.Tensor, scale: float,
                               positive_groups: torch.Tensor | None = None,
                               doc_groups: torch.Tensor | None = None) -> torch.Tensor:
    """Summed in-batch-negative cross-entropy. Row i's positive is docs[i]; docs beyond the first B rows are
    extra (hard) negatives. A column whose document group equals row i's positive group (the same document
    again) is not a negative for row i. doc_groups: one group per docs row (default: positive_groups)."""
    sims = scale * F.normalize(queries, dim=-1) @ F.normalize(docs, dim=-1).T
    if positive_groups is not None:
        columns = positive_groups if doc_groups is None else doc_groups
        same = positive_groups.unsqueeze(1) == columns.unsqueeze(0)
        same[torch.arange(sims.shape[0]), torch.arange(sims.shape[0])] = False
        sims = sims.masked_fill(same, float("-inf"))
    target = torch.arange(sims.shape[0], device=sims.device)
    return F.cross_entropy(sims.float(), target, reduction="sum")


def angle_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise AnglE similarity of two (N, D) tensors (see module doc)."""
    a, b = a.float(), b.float()
    if a.shape[-1] % 2:
        a, b = F.pad(a, (0, 1)), F.pad(b, (0, 1))
    re_a, im_a = a.chunk(2, dim=-1)
    re_b, im_b = b.chunk(2, dim=-1)
    real = (re_a * re_b + im_a * im_b).sum(-1)
    imag = (im_a * re_b - re_a * im_b).sum(-1)
    return (real + imag).abs() / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)


def cosent(a: torch.Tensor, b: torch.Tensor, scores: torch.Tensor, scale: float,
           similarity: str = "cosine") -> torch.Tensor:
    """CoSENT ranking loss over all ordered pairs of the batch, times the batch size (see module doc);
    similarity "angle" is the AnglE loss."""
    sim = angle_similarity(a, b) if similarity == "angle" else F.cosine_similarity(a, b, dim=-1).float()
    cos = sim * scale
    diff = cos.unsqueeze(0) - cos.unsqueeze(1)  # diff[i, j] = cos_j - cos_i
    keep = scores.unsqueeze(1) > scores.unsqueeze(0)  # y_i > y_j
    diff = diff.masked_fill(~keep, float("-inf"))
    flat = torch.cat([diff.new_zeros(1), diff.flatten()])
    return torch.logsumexp(flat, dim=0) * a.shape[0]


def cosine_regression(a: torch.Tensor, b: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    return ((F.cosine_similarity(a, b, dim=-1).float() - scores) ** 2).sum()
