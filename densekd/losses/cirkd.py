"""CIRKD — Cross-Image Relational Knowledge Distillation for semantic segmentation (Yang, Zhou, An, Jiang,
Xu, Zhang; CVPR 2022, arXiv 2204.06986), as its official code computes it.

Sources (facts read, no code copied; paths at commit 2d8ad0f of github.com/winycg/CIRKD, the last commit
that holds the CVPR 2022 trainer — later commits replaced it by CIRKDV2):
  [T] ``train_cirkd.py``            argument defaults and the total loss;
  [B] ``losses/cirkd_mini_batch.py``  mini-batch pixel-to-pixel term (``CriterionMiniBatchCrossImagePair``);
  [M] ``losses/cirkd_memory.py``      memory bank, memory pixel-to-pixel / pixel-to-region terms
                                      (``StudentSegContrast``);
  [K] ``losses/kd.py``                the logit KD it is combined with (``CriterionKD``);
  [S] ``train_scripts/train_cirkd/citys/{deeplabv3_mbv2,deeplabv3_res18,pspnet_res18}.sh`` (Cityscapes:
      no loss flags, so [T]'s defaults; ``voc/*.sh`` pass λ_p = λ_r = 0.01);
  [N] ``models/deeplabv3.py``         the embedding is the output of the 3×3 conv–BN–ReLU after ASPP
                                      (``x_feat_after_aspp``), the logits the 1×1 classifier before upsampling.
The paper's PDF could not be read from here: the equation numbers below are this file's, written from the
official code (the paper's section names are kept: mini-batch-based pixel-to-pixel, memory-based
pixel-to-pixel, memory-based pixel-to-region distillation).

Defaults (all [T] unless said):
  lambda_kd = 1 (``--lambda-kd``), kd_temperature T = 1 (``--kd-temperature``);
  lambda_minibatch_pixel = 1 (``--lambda-minibatch-pixel``);
  lambda_memory_pixel = 0.1, lambda_memory_region = 0.1 (``--lambda-memory-pixel/-region``; Cityscapes [S]);
  contrast_temperature τ = 0.1 (``--contrast-temperature``, used by [B] and [M]);
  contrast_kd_temperature T_c = 1 (``--contrast-kd-temperature``, [M]);
  pixel_memory_size N_p = 20000, region_memory_size N_r = 2000 per class (``--pixel/region-memory-size``);
  pixel_contrast_size 4096, region_contrast_size 1024 in total: [T] hands ``size // num_classes + 1`` per class
  to [M], so every class contributes that many slots (Cityscapes, 19 classes: 216 and 54);
  pixel_update_freq = 16 pixels per class and image enqueued ([M], ``self.pixel_update_freq``);
  projection head conv1×1(C_s→C_t, no bias)–BN–ReLU–conv1×1(C_t→C_t, no bias) on the student ([M]).

Notation: per image b, F_T^b ∈ R^{C_t×A}, F_S^b ∈ R^{C_s×A} the teacher / student embeddings at the A = H·W
positions, x̂ = x/‖x‖₂ over channels, σ the softmax, KL(p‖q) = Σ p (log p − log q), B the images of the
batch on this process, y the ground-truth labels resized (nearest) to H×W.

  (1) L_kd = T²/(B·h·w) Σ_{b,pixel} KL(σ(z_T/T) ‖ σ(z_S/T))            [K]: logits at their own resolution,
      every pixel (ignored pixels included), batchmean over B·h·w.
  (2) S^{ij} = F̂_i^⊤ F̂_j ∈ R^{A×A}, for the student (raw embedding, no projection: [T] passes
      ``s_outputs[-1]``) and the teacher — the pixel-to-pixel relations of image i to image j.
  (3) L_batch_p2p = 1/B² Σ_i Σ_j 1/A Σ_a KL(σ(S_T^{ij}[a]/τ) ‖ σ(S_S^{ij}[a]/τ))   [B]: every ordered pair,
      i = j included, every position (ignored ones included), no τ² factor, no pooling (``pooling=False``,
      [T] does not set it).
  (4) memory update [M] ``_dequeue_and_enqueue``, before the relations are taken: with the teacher's F̂_T and
      y of every process (all-gather, rank order), for each image and each present class c (ascending):
        region queue  Q_r[c, ptr_r[c]] ← normalize(mean_{a: y_a = c} F̂_T(a)),  ptr_r[c] ← (ptr_r[c]+1) mod N_r;
        pixel queue   K = min(n_c, 16) of the class's embeddings; if ptr_p[c] + K ≥ N_p they go to the last K
                      slots and ptr_p[c] ← 0, else to slots ptr_p[c] … ptr_p[c]+K−1 and ptr_p[c] += K.
  (5) contrast sets V_p = {Q_p[c, k]: every class c, k ∈ I_p}, I_p the first 4096//K+1 of a random
      permutation of the N_p slots (the same slots for every class, class-major order); V_r likewise with
      1024//K+1 of the N_r slots.
  (6) L_memory_p2p = T_c²/|V| Σ_{a valid} KL(σ(f̂_T(a)·V_p^⊤/(τ T_c)) ‖ σ(ĝ_S(a)·V_p^⊤/(τ T_c))), over the
      non-ignored positions a of the batch, ĝ_S = normalize(proj(F_S)).
  (7) L_memory_p2r: (6) with V_r.
  (8) L = L_task + λ_kd L_kd + λ_b L_batch_p2p + λ_p L_memory_p2p + λ_r L_memory_p2r           [T]
      (returned: ``loss_kd``, ``loss_batch_p2p``, ``loss_memory_p2p``, ``loss_memory_p2r``, each weighted).

Decisions (docs/methods.md, "CIRKD"; every baseline follows its official code and default weights):
  D1 pixel enqueue: the paper's pixel queue holds each class's pixel embeddings; [M] draws the K indices as
     ``perm[:K]`` of ``randperm(n_c)`` and uses them as *positions in the whole image*, so it stores the
     embeddings at positions 0…n_c−1, whatever their class. Default ``pixel_sampling="class"`` samples among
     the class's own positions (the paper); ``"official"`` reproduces the code's indexing.
  D2 random numbers (bank init, enqueue, contrast sets) come from CPU generators seeded from ``seed``, the
     number of bank updates so far (a buffer) and a purpose tag, not from the global RNG: a resumed run draws
     exactly what an uninterrupted one draws, and the enqueue draws are the same on every process, so every
     rank holds a bit-identical bank (the update works on gathered data). The contrast draws also take the
     rank, so processes sample independently as [M]'s per-process ``randperm`` does. The update draws its
     ``randperm(n_c)[:K]`` of every (image, class) at once: it takes the generator's raw 32-bit stream and runs
     the first K swaps of each Fisher–Yates shuffle side by side (``_randperm_heads``), the very numbers and
     order a loop of ``randperm`` calls consumes (tested against ``randperm`` and against that loop).
  D3 the bank is updated in training mode only (``self.training``), and only ever holds detached,
     L2-normalised float32 teacher embeddings; the relations are computed in float32 outside autocast.
  D4 a batch of one image has no cross-image pair: (3) would shrink to the single-image term, so it is an
     error (set ``lambda_minibatch_pixel=0`` to train on single images anyway).
  D5 the projection head's BN is ``nn.BatchNorm2d`` ([M] uses SyncBatchNorm; convert the Distiller with
     ``nn.SyncBatchNorm.convert_sync_batchnorm`` for that under DDP on GPUs).

Inputs: ``student_feat`` / ``teacher_feat`` the embeddings [B, C, H, W]; ``context.masks`` [B, H_img, W_img]
labels (``context.ignore_index`` ignored); ``context.aux["logits"] = (student_logits, teacher_logits)``
[B, K, h, w] (the segmentation task's default pair sets it up).
"""
from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.relation import relation_kl
from .base import DistillContext, DistillLoss
from .registry import register_loss

_INIT, _ENQUEUE, _CONTRAST = 0, 1, 2
PIXEL_SAMPLING = ("class", "official")


def _seeded_generator(*parts: int) -> torch.Generator:
    """A CPU generator whose seed is a stable hash of ``parts`` (D2)."""
    digest = hashlib.sha256(":".join(str(int(p)) for p in parts).encode()).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


def _randperm_stream(gen: torch.Generator, count: int) -> Tensor:
    """The next ``count`` 32-bit outputs of ``gen``'s Mersenne twister, in order, as int64 (D2).

    ``random_`` over the full int64 range draws ``random64()`` per element, which the CPU generator forms
    from two consecutive 32-bit outputs (first one high); splitting them back gives the stream that
    ``torch.randperm`` consumes one output per swap. Draws one output too many when ``count`` is odd (the
    generator is used for nothing else afterwards)."""
    v = torch.empty((count + 1) // 2, dtype=torch.long).random_(-(2**63), None, generator=gen)
    return torch.stack([(v >> 32) & 0xFFFFFFFF, v & 0xFFFFFFFF], 1).reshape(-1)[:count]


def _randperm_heads(sizes: Tensor, heads: int, gen: torch.Generator) -> Tensor:
    """``torch.randperm(n, generator=gen)[:heads]`` for each n (≥ 1) of ``sizes`` in turn, as the rows of one
    [S, min(heads, max n)] tensor (entries past a row's n are padding), from the same random numbers.

    CPU ``randperm(n)`` (n < 2³²/20) is the Fisher–Yates shuffle ``for i < n−1: swap(r[i], r[i + u_i mod
    (n−i)])``, one 32-bit output u_i per swap, and position i is final after swap i; so the first ``heads``
    swaps of every shuffle, run side by side (a loop over ``heads``, not over the permutations), give the
    heads. The tests check it against ``torch.randperm``."""
    draws = sizes - 1  # randperm(n) consumes n − 1 outputs
    total = int(draws.sum()) if sizes.numel() else 0
    width = int(sizes.max()) if sizes.numel() else 0
    perm = torch.arange(width).repeat(sizes.numel(), 1)
    if total == 0:
        return perm[:, :heads]
    stream = _randperm_stream(gen, total)
    first = torch.cumsum(draws, 0) - draws  # each shuffle's first output in the stream
    rows = torch.arange(sizes.numel())
    for i in range(min(heads, width - 1)):  # swap i of every shuffle at once
        live = draws > i
        u = stream[torch.where(live, first + i, 0)]
        j = torch.where(live, i + u % (sizes - i).clamp_min(1), i)
        vi = perm[:, i].clone()
        perm[:, i] = perm[rows, j]
        perm[rows, j] = vi
    return perm[:, :heads]


def _last_writes(dst: Tensor) -> Tensor:
    """Indices of the last write to each distinct slot of ``dst`` (writes in order; a sequential loop of
    writes leaves the last one)."""
    uniq, inv = torch.unique(dst, return_inverse=True)
    last = torch.full((uniq.numel(),), -1, dtype=torch.long)
    return last.scatter_reduce_(0, inv, torch.arange(dst.numel()), "amax")


def _pixel_slots(cls_of_seg: Tensor, rank: Tensor, k_seg: Tensor, ptr: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Eq. (4)'s pixel-queue pointer walk for every segment at once: segment s is its class's
    ``rank[s]``-th and writes ``k_seg[s]`` slots from the pointer p — or, if p + k ≥ ``size``, the last k slots
    and the pointer goes back to 0. Returns (each segment's first slot, the pointers after the update).
    Between wrap-arounds the pointer is a cumulative sum; each pass of the loop resolves one wrap-around of
    every class (a wrap restarts that class's walk at 0), so it runs once plus once per wrap-around of the
    class that wraps most — not once per image or class."""
    if rank.numel() == 0:
        return torch.zeros(0, dtype=torch.long), ptr.clone()
    n_cls, t = ptr.numel(), int(rank.max()) + 1
    kk = torch.zeros(n_cls, t, dtype=torch.long)
    kk[cls_of_seg, rank] = k_seg
    present = kk > 0
    before = torch.cumsum(kk, 1) - kk  # the k's of a class's earlier segments
    before_ext = torch.cat([before, kk.sum(1, keepdim=True)], 1)
    steps = torch.arange(t)
    first = torch.zeros(n_cls, t, dtype=torch.long)
    start, p0 = torch.zeros(n_cls, dtype=torch.long), ptr.clone()  # the current run: first segment, pointer
    while True:
        run_before = before_ext.gather(1, start[:, None])
        p = p0[:, None] + before - run_before
        run = present & (steps >= start[:, None])
        wrap = run & (p + kk >= size)
        wrapped = wrap.any(1)
        stop = torch.where(wrapped, wrap.long().argmax(1), torch.full_like(start, t))  # the run's first wrap
        first = torch.where(run & (steps <= stop[:, None]), torch.where(wrap, size - kk, p), first)
        if not bool(wrapped.any()):
            return first[cls_of_seg, rank], p0 + before_ext[:, t] - run_before[:, 0]
        start = torch.where(wrapped, stop + 1, start)
        p0 = torch.where(wrapped, torch.zeros_like(p0), p0)


def _dist_world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _dist_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@torch.no_grad()
def concat_all_gather(x: Tensor) -> Tensor:
    """Every process's ``x`` concatenated along dim 0 in rank order ([M] ``concat_all_gather``; no gradient).
    Without torch.distributed (or with one process) returns ``x``. Shapes must agree across processes."""
    world = _dist_world()
    if world == 1:
        return x
    shape = torch.tensor(x.shape, device=x.device, dtype=torch.long)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    if any(not torch.equal(s, shape) for s in shapes):
        raise ValueError(
            f"cirkd: the memory bank gathers every process's teacher embeddings, which must have one shape; "
            f"got {[tuple(s.tolist()) for s in shapes]} (use the same crop size on every process)"
        )
    out = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, 0)


def _kl_rows(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """Σ over the last dim of KL(σ(t) ‖ σ(s)), one value per row (the teacher side carries no gradient)."""
    log_p_t = F.log_softmax(teacher_logits.detach(), dim=-1)
    log_p_s = F.log_softmax(student_logits, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)


def _rows(emb: Tensor) -> Tensor:
    """[B, C, H, W] → its B·H·W positions as rows [B·H·W, C] (image-major; one copy)."""
    return emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])


def _unit(feat: Tensor) -> Tensor:
    """x̂ = x/‖x‖₂ over the channels of [B, C, H, W], in float32 (normalised before the layout changes: the
    bank then receives exactly the values it always did)."""
    return F.normalize(feat.float(), dim=1)


def _minibatch_relation(s_rows: Tensor, t_rows: Tensor, b: int, tau: float) -> Tensor:
    """Eq. (2)–(3) on unit rows [B·A, C] (image-major): every image pair's A×A similarities, the softmax over
    image j's A positions, as :func:`~densekd.ops.relation_kl` with groups of A columns."""
    a = s_rows.shape[0] // b
    return relation_kl(s_rows, s_rows, t_rows, t_rows, 1.0 / tau, group=a) / (a * b * b)


def minibatch_pixel_relation_loss(student_feat: Tensor, teacher_feat: Tensor, tau: float = 0.1) -> Tensor:
    """Eq. (2)–(3): mean over the B² ordered image pairs of the row-averaged KL between the teacher's and the
    student's softmax(S/τ) pixel-to-pixel similarity rows. Formed a block of rows at a time
    (:class:`~densekd.ops.RelationKL`): no B·A × B·A matrix is kept."""
    return _minibatch_relation(_rows(_unit(student_feat)), _rows(_unit(teacher_feat.detach())),
                               student_feat.shape[0], tau)


def logit_kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Eq. (1): pixel-wise KL(σ(z_T/T) ‖ σ(z_S/T)) averaged over every pixel of the batch, × T²."""
    k = student_logits.shape[1]
    s = student_logits.float().permute(0, 2, 3, 1).reshape(-1, k)
    t = teacher_logits.float().permute(0, 2, 3, 1).reshape(-1, k)
    return _kl_rows(t / temperature, s / temperature).mean() * temperature**2


@register_loss("cirkd")
class CIRKD(DistillLoss):
    """CIRKD loss for one (embedding, logits) pair; see the module docstring for every equation and default.

    Args:
        student_channels, teacher_channels: embedding channels C_s, C_t.
        num_classes: K, the classes of the labels (one queue per class).
        align: ``"projection"`` ([M]'s conv1×1–BN–ReLU–conv1×1 head, default), or ``"conv1x1"`` /
            ``"identity"`` (see :class:`DistillLoss`); used by the memory terms only.
        lambda_kd, lambda_minibatch_pixel, lambda_memory_pixel, lambda_memory_region: the λ's of eq. (8);
            a term whose λ is 0 is neither computed nor returned (both memory λ's 0: no bank, no head).
        kd_temperature, contrast_temperature, contrast_kd_temperature: T, τ, T_c.
        pixel_memory_size, region_memory_size: N_p, N_r slots per class.
        pixel_contrast_size, region_contrast_size: totals; ``size // num_classes + 1`` slots per class are
            sampled (eq. 5).
        pixel_update_freq: pixels per class and image enqueued (16).
        pixel_sampling: ``"class"`` (paper, default) or ``"official"`` (the code's indexing) — D1.
        seed: seeds the bank's random numbers (D2).
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        num_classes: int | None = None,
        align: str = "projection",
        lambda_kd: float = 1.0,
        lambda_minibatch_pixel: float = 1.0,
        lambda_memory_pixel: float = 0.1,
        lambda_memory_region: float = 0.1,
        kd_temperature: float = 1.0,
        contrast_temperature: float = 0.1,
        contrast_kd_temperature: float = 1.0,
        pixel_memory_size: int = 20000,
        region_memory_size: int = 2000,
        pixel_contrast_size: int = 4096,
        region_contrast_size: int = 1024,
        pixel_update_freq: int = 16,
        pixel_sampling: str = "class",
        seed: int = 0,
    ) -> None:
        if align not in ("projection", "conv1x1", "identity"):
            raise ValueError(f"cirkd align must be 'projection', 'conv1x1' or 'identity', got {align!r}")
        super().__init__(student_channels, teacher_channels, "conv1x1" if align == "projection" else align)
        for name, v in (("lambda_kd", lambda_kd), ("lambda_minibatch_pixel", lambda_minibatch_pixel),
                        ("lambda_memory_pixel", lambda_memory_pixel), ("lambda_memory_region", lambda_memory_region)):
            if v < 0:
                raise ValueError(f"cirkd {name} must be >= 0, got {v}")
        for name, v in (("kd_temperature", kd_temperature), ("contrast_temperature", contrast_temperature),
                        ("contrast_kd_temperature", contrast_kd_temperature)):
            if v <= 0:
                raise ValueError(f"cirkd {name} must be > 0, got {v}")
        for name, v in (("pixel_memory_size", pixel_memory_size), ("region_memory_size", region_memory_size),
                        ("pixel_contrast_size", pixel_contrast_size), ("region_contrast_size", region_contrast_size),
                        ("pixel_update_freq", pixel_update_freq)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"cirkd {name} must be a positive integer, got {v!r}")
        if pixel_update_freq > pixel_memory_size:
            raise ValueError(f"cirkd pixel_update_freq ({pixel_update_freq}) must not exceed pixel_memory_size "
                             f"({pixel_memory_size})")
        if pixel_sampling not in PIXEL_SAMPLING:
            raise ValueError(f"cirkd pixel_sampling must be one of {PIXEL_SAMPLING}, got {pixel_sampling!r}")
        self.lambda_kd = float(lambda_kd)
        self.lambda_minibatch_pixel = float(lambda_minibatch_pixel)
        self.lambda_memory_pixel = float(lambda_memory_pixel)
        self.lambda_memory_region = float(lambda_memory_region)
        self.kd_temperature = float(kd_temperature)
        self.contrast_temperature = float(contrast_temperature)
        self.contrast_kd_temperature = float(contrast_kd_temperature)
        self.pixel_memory_size = pixel_memory_size
        self.region_memory_size = region_memory_size
        self.pixel_update_freq = pixel_update_freq
        self.pixel_sampling = pixel_sampling
        self.seed = int(seed)
        self.use_memory = self.lambda_memory_pixel > 0 or self.lambda_memory_region > 0
        if self.use_memory and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"cirkd needs num_classes (a positive integer: one memory queue per class) for its "
                             f"memory terms, got {num_classes!r}")
        self.num_classes = num_classes
        c = self.teacher_channels
        if not self.use_memory:
            self.align = nn.Identity()  # only the memory terms use the projection: no unused parameters
            return
        if align == "projection":  # [M] project_head
            self.align = nn.Sequential(
                nn.Conv2d(self.student_channels, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                nn.Conv2d(c, c, 1, bias=False),
            )
        k = num_classes
        # eq. (5): per-class slots sampled from the totals, as [T] hands them to [M]
        self.pixel_contrast_per_class = pixel_contrast_size // k + 1
        self.region_contrast_per_class = region_contrast_size // k + 1
        g = _seeded_generator(self.seed, 0, _INIT)  # [M]: random unit vectors until real embeddings arrive
        self.register_buffer("pixel_queue", F.normalize(torch.randn(k, pixel_memory_size, c, generator=g), dim=2))
        self.register_buffer("pixel_queue_ptr", torch.zeros(k, dtype=torch.long))
        self.register_buffer("region_queue", F.normalize(torch.randn(k, region_memory_size, c, generator=g), dim=2))
        self.register_buffer("region_queue_ptr", torch.zeros(k, dtype=torch.long))
        self.register_buffer("bank_updates", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ memory (eq. 4)
    @torch.no_grad()
    def update_memory(self, teacher_emb: Tensor, labels: Tensor, ignore_index: int = 255) -> int:
        """Eq. (4): enqueue region means and sampled pixels of every image of every process (gathered).

        ``teacher_emb`` [B, C_t, H, W] L2-normalised teacher embeddings, ``labels`` [B, H, W] at the same
        resolution. Images in rank order, classes ascending, pointers advanced as [M] does — computed for
        every (image, class) segment at once: the labels, pointers and update count come to the host in one
        copy (the CPU generator's draws depend on the class counts, D2), the writes are planned there with
        tensor operations (no loop over images or classes) and applied with one ``index_copy_`` per queue (a
        slot written twice in one update keeps the later write, as the sequential loop would). Returns the
        number of updates so far (this one included)."""
        keys = concat_all_gather(teacher_emb.detach().float().contiguous())
        labs = concat_all_gather(labels.contiguous())
        n, c, h, w = keys.shape
        a, k = h * w, self.num_classes
        host = torch.cat([labs.reshape(-1).to(self.region_queue_ptr.device, torch.long), self.region_queue_ptr,
                          self.pixel_queue_ptr, self.bank_updates.reshape(1)]).cpu()
        lab_cpu = host[: n * a].reshape(n, a)
        ptr_r, ptr_p, updates = host[n * a: n * a + k], host[n * a + k: n * a + 2 * k], int(host[-1])
        valid = lab_cpu != ignore_index
        bad = lab_cpu[valid & ((lab_cpu < 0) | (lab_cpu >= k))]
        if bad.numel():
            raise ValueError(f"cirkd: context.masks holds label {int(bad[0])}, outside 0..{k - 1} (num_classes={k}) "
                             f"and not the ignore index {ignore_index}")
        n_r, n_p, m = self.region_memory_size, self.pixel_memory_size, self.pixel_update_freq
        cls = torch.where(valid, lab_cpu, k)  # ignore → k (after every class)
        counts = torch.zeros(n, k + 1, dtype=torch.long).scatter_add_(1, cls, torch.ones_like(cls))[:, :k]
        present = counts > 0
        # segments: the (image, class) pairs with pixels, image-major and classes ascending ([M]: torch.unique)
        seg_img, seg_cls = present.nonzero(as_tuple=True)
        seg_n = counts[seg_img, seg_cls]
        rank = (torch.cumsum(present, 0) - 1)[seg_img, seg_cls]  # the segment's turn in its class's queue
        # region queue: one slot per segment, pointer + rank (mod N_r)
        r_dst = seg_cls * n_r + (ptr_r[seg_cls] + rank) % n_r
        r_src = seg_img * k + seg_cls
        new_ptr_r = (ptr_r + present.sum(0)) % n_r
        # pixel queue: K = min(n_c, m) drawn pixels per segment (randperm(n_c)[:K], same draws as [M]'s loop)
        k_seg = seg_n.clamp_max(m)
        heads = _randperm_heads(seg_n, m, _seeded_generator(self.seed, updates, _ENQUEUE))  # same on every rank (D2)
        first, new_ptr_p = _pixel_slots(seg_cls, rank, k_seg, ptr_p, n_p)
        seg_of = torch.repeat_interleave(torch.arange(seg_n.numel()), k_seg)  # one entry per written pixel
        j = torch.arange(seg_of.numel()) - (torch.cumsum(k_seg, 0) - k_seg)[seg_of]
        drawn = heads[seg_of, j]
        if self.pixel_sampling == "class":  # the class's own positions, ascending (D1)
            order = torch.sort(cls, dim=1, stable=True).indices  # each image's positions grouped by class
            class_start = torch.cumsum(counts, 1) - counts
            pos = order[seg_img[seg_of], class_start[seg_img, seg_cls][seg_of] + drawn]
        else:  # [M]: randperm(n_c) taken as positions in the whole image
            pos = drawn
        p_dst = seg_cls[seg_of] * n_p + first[seg_of] + j
        p_img = seg_img[seg_of]
        if seg_n.numel():
            dev = self.region_queue.device
            flat = keys.reshape(n, c, a)
            # region means of every (image, class) at once: one-hot [N, K+1, A] @ [N, A, C] (ignore → column K)
            lab_dev = labs.reshape(n, a).long()
            cls_dev = torch.where(lab_dev == ignore_index, torch.full_like(lab_dev, k), lab_dev)
            onehot = F.one_hot(cls_dev, k + 1).to(flat.dtype).transpose(1, 2)  # [N, K+1, A]
            sums = torch.bmm(onehot, flat.transpose(1, 2))[:, :k]  # [N, K, C]
            means = F.normalize(sums / onehot[:, :k].sum(2, keepdim=True).clamp_min(1.0), dim=2).reshape(n * k, c)
            keep = _last_writes(r_dst)
            self.region_queue.view(-1, c).index_copy_(
                0, r_dst[keep].to(dev), means[r_src[keep].to(means.device)].to(dev))
            keep = _last_writes(p_dst)
            rows = flat.transpose(1, 2)[p_img[keep].to(flat.device), pos[keep].to(flat.device)]  # [P, C]
            self.pixel_queue.view(-1, c).index_copy_(0, p_dst[keep].to(dev), F.normalize(rows, dim=1).to(dev))
        self.region_queue_ptr.copy_(new_ptr_r)
        self.pixel_queue_ptr.copy_(new_ptr_p)
        self.bank_updates += 1
        return updates + 1

    def contrast_sets(self, updates: int | None = None) -> tuple[Tensor, Tensor]:
        """Eq. (5): (V_p [K·n_p, C], V_r [K·n_r, C]) — the same random slots for every class, class-major.
        ``updates``: the bank's update count when the caller knows it (saves reading the buffer back)."""
        updates = int(self.bank_updates) if updates is None else updates
        g = _seeded_generator(self.seed, updates, _CONTRAST, _dist_rank())  # D2
        ip = torch.randperm(self.pixel_memory_size, generator=g)[: self.pixel_contrast_per_class]
        ir = torch.randperm(self.region_memory_size, generator=g)[: self.region_contrast_per_class]
        c = self.teacher_channels
        v_p = self.pixel_queue.index_select(1, ip.to(self.pixel_queue.device)).reshape(-1, c)  # whole rows: a copy
        v_r = self.region_queue.index_select(1, ir.to(self.region_queue.device)).reshape(-1, c)
        return v_p, v_r

    def _memory_relation(self, s_anchor: Tensor, t_anchor: Tensor, contrast: Tensor) -> Tensor:
        """Eq. (6)/(7): KL of the anchors' softmax similarity to the contrast set, batchmean, × T_c²."""
        tc, tau = self.contrast_kd_temperature, self.contrast_temperature
        kl = relation_kl(s_anchor, contrast, t_anchor, contrast, 1.0 / (tau * tc))
        return kl / s_anchor.shape[0] * tc**2

    # ------------------------------------------------------------------ forward
    def _labels_at(self, context: DistillContext | None, b: int, hw: tuple[int, int]) -> Tensor:
        if context is None or context.masks is None:
            raise ValueError(
                "cirkd needs ground-truth labels in context.masks ([B, H, W]) for its memory terms (anchors, "
                "region pooling); the Distiller fills them from segmentation targets (or set "
                "lambda_memory_pixel=lambda_memory_region=0)"
            )
        m = context.masks
        if m.dim() != 3 or m.shape[0] != b:
            raise ValueError(f"cirkd: context.masks must be [B, H, W] with B={b}, got {tuple(m.shape)}")
        # [M]: nearest resize of the labels to the embedding's size
        return F.interpolate(m[:, None].float(), size=hw, mode="nearest")[:, 0].long()

    def forward(self, student_feat: Tensor, teacher_feat: Tensor,
                context: DistillContext | None = None) -> dict[str, Tensor]:
        self.check_pair(student_feat, teacher_feat)
        b, _, h, w = student_feat.shape
        out: dict[str, Tensor] = {}
        with torch.autocast(device_type=student_feat.device.type, enabled=False):  # D3: float32 relations
            if self.lambda_kd > 0:  # eq. (1)
                logits = None if context is None else context.aux.get("logits")
                if logits is None:
                    raise ValueError(
                        "cirkd's logit KD needs context.aux['logits'] = (student_logits, teacher_logits); give the "
                        "pair aux={'logits': ('classifier', 'classifier')} (the segmentation task's default pair "
                        "does) or set lambda_kd=0"
                    )
                zs, zt = logits
                if zs.dim() != 4 or zs.shape != zt.shape:
                    raise ValueError(f"cirkd: student and teacher logits must be [B, K, h, w] of one shape, got "
                                     f"student {tuple(zs.shape)} and teacher {tuple(zt.shape)}")
                out["loss_kd"] = self.lambda_kd * logit_kd_loss(zs, zt.detach(), self.kd_temperature)
            if self.lambda_minibatch_pixel > 0 or self.use_memory:
                t_emb = _unit(teacher_feat.detach())  # F̂_T, once for eq. (2)–(7) and the bank
                t_rows = _rows(t_emb)  # [B·A, C_t]
            if self.lambda_minibatch_pixel > 0:  # eq. (2)–(3)
                if b < 2:
                    raise ValueError(
                        f"cirkd: the cross-image pixel-to-pixel term needs at least 2 images per batch on each "
                        f"process, got student features of shape {tuple(student_feat.shape)}; raise "
                        f"train.batch_size or set lambda_minibatch_pixel=0"
                    )
                out["loss_batch_p2p"] = self.lambda_minibatch_pixel * _minibatch_relation(
                    _rows(_unit(student_feat)), t_rows, b, self.contrast_temperature)
            if self.use_memory:  # eq. (4)–(7)
                labels = self._labels_at(context, b, (h, w))
                ignore = context.ignore_index if context is not None else 255
                s_rows = _rows(_unit(self.align(student_feat.float())))  # ĝ_S, [B·A, C_t]
                if self.training:  # eq. (4), before the relations ([M])
                    updates = self.update_memory(t_emb, labels, ignore)
                else:
                    updates = int(self.bank_updates)
                valid = (labels != ignore).reshape(-1)
                s_anchor, t_anchor = s_rows[valid], t_rows[valid]
                v_p, v_r = self.contrast_sets(updates)
                for name, lam, contrast in (("loss_memory_p2p", self.lambda_memory_pixel, v_p),
                                            ("loss_memory_p2r", self.lambda_memory_region, v_r)):
                    if lam == 0:
                        continue
                    if s_anchor.shape[0] == 0:  # [M]: no labelled pixel → a zero term that keeps the graph
                        out[name] = 0.0 * s_rows.pow(2).mean()
                    else:
                        out[name] = lam * self._memory_relation(s_anchor, t_anchor, contrast)
        return out
