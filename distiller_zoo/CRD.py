"""Contrastive Representation Distillation, ``--distill crd`` (Tian, Krishnan, Isola, "Contrastive
Representation Distillation", ICLR 2020).

Student and teacher features are embedded (``Linear -> l2 normalisation``, ``--feat_dim`` 128
dimensions, one embedding each) and contrasted against a memory bank of past embeddings with
noise-contrastive estimation. For anchor ``i`` the bank rows ``j_0 = positive, j_1..j_K =
negatives`` are scored ``P(j | v) = exp(<bank[j], v> / T) / Z``, and with the uniform noise
distribution ``P_n = 1/N`` (``N`` = training-set size) the per-sample NCE loss is (the paper's
Eq. 18)::

    - log( P_0 / (P_0 + K P_n) ) - sum_{k=1..K} log( K P_n / (P_k + K P_n) )

It is applied twice and summed: the student's embedding against the teacher bank, and the
teacher's embedding against the student bank. Weight: ``-b 0.8`` (RepDistiller's script).

Features: ``feats[-1]``, the pooled feature vectors of student and teacher (post-ReLU).

As in RepDistiller:
- two banks ``[N, feat_dim]`` (student's and teacher's embeddings by sample index), initialised
  uniformly in ``+-1/sqrt(feat_dim/3)``; after each training step the rows of the batch's samples
  are updated ``bank[i] <- normalise(m * bank[i] + (1 - m) * v_i)`` with ``--nce_m`` 0.5;
- ``Z`` is a constant per bank, estimated once on the first batch as ``N * mean(exp(<bank, v>/T))``
  over the batch's K+1 scores, and kept (a buffer, so a resumed run keeps it);
- ``--mode exact``: the positive is the sample itself; ``--mode relax``: the positive is a random
  sample of the anchor's class. In both modes the K negatives are drawn without replacement from
  the training samples of the OTHER classes (RepDistiller's ``cls_negative``);
- ``--nce_t`` 0.07, ``eps = 1e-7`` inside the logarithms.

Per sample: the two NCE terms of that anchor; the batch mean is RepDistiller's ``CRDLoss``.

The banks and ``Z`` are registered buffers of this module (one set per teacher, since there is one
distiller per teacher), so they are saved with the checkpoint (``terms.state_dict()``) and
restored on ``--resume``. The training labels and the class-sorted index tables are buffers that
are not saved (they come from the data set).

Deliberate differences from RepDistiller:
- Negatives (and relax positives) are drawn on the loss's device with torch's RNG
  (``torch.multinomial`` without replacement over a per-anchor mask of the other classes, rows in
  chunks to bound memory), not by the data loader with numpy; the loader only yields indices.
- ``--nce_k`` larger than the fewest negatives any anchor has (``N`` minus the largest class) is
  clipped to that number with a warning (RepDistiller would sample with replacement; on small data
  sets such as digits, ~1,440 images, the default 16384 cannot be met otherwise). The clipped K is
  the K of the loss (``m = K`` in the noise term).
- The scores and the NCE loss are computed in float32 with autocast disabled: ``exp(1/T)`` is
  about 1.6e6 and would overflow half precision.
- The bank is updated only in training mode (a forward in eval mode leaves it unchanged), and with
  ``l2`` normalisation guarded by an epsilon.
- Under ``torchrun`` each rank's rows (indices and embeddings) are gathered from all ranks before
  the update, so every rank's bank receives the whole global batch, as one process would.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .argtypes import positive_float, positive_int, unit_interval_float
from .base import Distiller, TeacherLoss, add_argument_once
from .connectors import full_precision, no_autocast
from .registry import register_distiller

EPS = 1e-7
SAMPLE_CHUNK = 1 << 25            # elements of the [rows, N] sampling matrix built at once


class NormalizedEmbed(nn.Module):
    """CRD's embedding: flatten -> Linear -> l2 normalisation."""

    def __init__(self, dim_in, dim_out=128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x):
        return F.normalize(self.linear(x.flatten(1)), dim=1)


def gather_from_ranks(*tensors):
    """Each tensor concatenated over the ranks of a running process group, in rank order (the
    tensors themselves without one). Ranks may hold different numbers of rows."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    world = dist.get_world_size()
    count = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    out = []
    for t in tensors:
        padded = t.new_zeros((max(counts),) + tuple(t.shape[1:]))
        padded[:t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        out.append(torch.cat([part[:c] for part, c in zip(parts, counts)]))
    return out


def nce_per_sample(scores, num_data):
    """NCE loss per anchor from normalised scores ``[B, K+1]`` (column 0 the positive)."""
    K = scores.shape[1] - 1
    noise = K / float(num_data)
    pos, neg = scores[:, 0], scores[:, 1:]
    log_d1 = torch.log(pos / (pos + noise + EPS))
    log_d0 = torch.log(noise / (neg + noise + EPS))
    return -(log_d1 + log_d0.sum(1))


@register_distiller("crd")
class CRD(Distiller):
    kind = "feature"
    default_weight = 0.8
    needs_index = True
    # Under torchrun the gathers have per-rank sizes read on the host (``all_gather_rows``); on one
    # GPU, negative sampling (``torch.multinomial`` without replacement over a per-anchor mask) is
    # not verified under capture. Stepped eagerly until scripts/gpu_check.sh has checked it.
    capturable = False
    not_capturable_because = ("negative sampling (torch.multinomial over masks) and, under torchrun, "
                              "gathers sized on the host: not captured")

    @classmethod
    def add_arguments(cls, parser):
        add_argument_once(parser, "--feat_dim", type=positive_int, default=128, help="embedding dimension (CRD, CC)")
        add_argument_once(parser, "--nce_k", type=positive_int, default=16384,
                          help="CRD: negatives per anchor (clipped, with a warning, to what the training set has)")
        add_argument_once(parser, "--nce_t", type=positive_float, default=0.07, help="CRD: temperature")
        add_argument_once(parser, "--nce_m", type=unit_interval_float, default=0.5,
                          help="CRD: momentum of the memory banks, in [0, 1)")
        add_argument_once(parser, "--mode", type=str, default="exact", choices=["exact", "relax"],
                          help="CRD positives: the sample itself (exact) or a random sample of its class "
                               "(relax); negatives always come from other classes")

    def __init__(self, ctx):
        super().__init__(ctx)
        opt = ctx.opt
        feat_dim, K = int(opt.feat_dim), int(opt.nce_k)
        self.T, self.momentum = float(opt.nce_t), float(opt.nce_m)
        self.mode = opt.mode
        if self.mode not in ("exact", "relax"):
            raise ValueError(f"crd: --mode must be exact or relax, got {self.mode!r}")
        if feat_dim < 1 or K < 1 or self.T <= 0 or not 0 <= self.momentum < 1:
            raise ValueError("crd needs --feat_dim >= 1, --nce_k >= 1, --nce_t > 0 and 0 <= --nce_m < 1")
        N = int(ctx.num_data)
        labels = ctx.train_labels
        if N <= 0 or labels is None:
            raise ValueError("crd needs the training-set size and labels (memory bank, negatives of other classes)")
        labels = torch.as_tensor(labels, dtype=torch.long).flatten().cpu()
        if labels.numel() != N:
            raise ValueError(f"crd: {labels.numel()} training labels for a training set of {N}")
        counts = torch.bincount(labels, minlength=max(int(labels.max()) + 1, ctx.num_classes))
        available = N - int(counts.max())
        if available < 1:
            raise ValueError("crd needs at least two classes in the training set (negatives come from other classes)")
        if K > available:
            warnings.warn(f"crd: --nce_k {K} exceeds the {available} negatives of other classes every anchor has "
                          f"(training set of {N}); using --nce_k {available}", stacklevel=2)
            K = available
        self.K, self.num_data = K, N

        self.embed_s = NormalizedEmbed(math.prod(ctx.student_shapes[-1]), feat_dim)
        self.embed_t = NormalizedEmbed(math.prod(ctx.teacher_shapes[-1]), feat_dim)
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(N, feat_dim).mul_(2 * stdv).sub_(stdv))
        self.register_buffer("memory_t", torch.rand(N, feat_dim).mul_(2 * stdv).sub_(stdv))
        self.register_buffer("z", torch.full((2,), -1.0))         # Z of (student anchor, teacher anchor)
        order = torch.argsort(labels, stable=True)
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("class_order", order, persistent=False)
        self.register_buffer("class_count", counts, persistent=False)
        self.register_buffer("class_start", torch.cumsum(counts, 0) - counts, persistent=False)

    # -- sampling ---------------------------------------------------------------------------------
    def sample_negatives(self, y):
        """``[B, K]`` training indices of classes other than ``y``, without replacement per row."""
        N = self.num_data
        rows = max(1, SAMPLE_CHUNK // N)
        out = []
        for start in range(0, y.shape[0], rows):
            mask = (self.labels[None, :] != y[start:start + rows, None]).float()
            out.append(torch.multinomial(mask, self.K, replacement=False))
        return torch.cat(out)

    def sample_positives(self, idx, y):
        if self.mode == "exact":
            return idx
        count = self.class_count[y]
        offset = (torch.rand(y.shape[0], device=y.device) * count).long().clamp_max(count - 1)
        return self.class_order[self.class_start[y] + offset]

    def contrast_indices(self, idx):
        """``[B, K+1]``: the positive, then K negatives, for every anchor of the batch."""
        y = self.labels[idx]
        return torch.cat([self.sample_positives(idx, y)[:, None], self.sample_negatives(y)], 1)

    # -- loss -------------------------------------------------------------------------------------
    def scores(self, bank, v, contrast, which):
        """Normalised scores ``exp(<bank[j], v>/T) / Z`` ``[B, K+1]``; sets Z on first use."""
        weight = bank[contrast]                                   # [B, K+1, d], no gradient
        out = torch.exp(torch.bmm(weight, v[:, :, None]).squeeze(2) / self.T)
        z = torch.where(self.z[which] < 0, out.detach().mean() * self.num_data, self.z[which])
        self.z[which] = z                                         # no host sync: set once, then kept
        return out / z

    @torch.no_grad()
    def update_memory(self, idx, v_s, v_t):
        # Under torchrun every rank applies every rank's rows, so the banks stay identical (DDP
        # would otherwise overwrite them with rank 0's at the next forward, losing the other shards).
        idx, v_s, v_t = gather_from_ranks(idx, v_s.detach(), v_t.detach())
        for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
            rows = bank[idx] * self.momentum + v.detach() * (1 - self.momentum)
            bank.index_copy_(0, idx, F.normalize(rows, dim=1))

    def forward(self, s, t, batch, contrast=None):
        if batch.index is None:
            raise ValueError("crd needs sample indices (a loader built with with_index=True)")
        f_s = s.feats[-1]
        idx = batch.index.to(self.memory_s.device).long()
        with no_autocast(f_s):
            v_s = self.embed_s(full_precision(f_s))
            v_t = self.embed_t(full_precision(t.feats[-1].detach()))
            if contrast is None:
                contrast = self.contrast_indices(idx)
            scores_s = self.scores(self.memory_t, v_s, contrast, 0)    # student anchor, teacher bank
            scores_t = self.scores(self.memory_s, v_t, contrast, 1)    # teacher anchor, student bank
            loss = nce_per_sample(scores_s, self.num_data) + nce_per_sample(scores_t, self.num_data)
        if self.training:
            self.update_memory(idx, v_s, v_t)
        return TeacherLoss(loss, anchor=f_s)
