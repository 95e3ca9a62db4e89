"""CIRKD: each relation on a hand-built batch (expected values from the formulas, written out here), the
memory bank's update order and pointer wrap-around, gradients, bad input, the registry, the segmentation
task's default pair, the Distiller, exact resume through the engine, ``python -m densekd train`` and a
2-process gloo run in which every rank must hold the same bank as one process fed the whole batch."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import yaml

import densekd
from densekd import Distiller, DistillContext, available_losses, build_loss
from densekd.config import from_dict
from densekd.errors import ConfigError
import densekd.losses.cirkd as cirkd_mod
from densekd.losses.cirkd import CIRKD
from densekd.tasks import get_task
from _loss_helpers import check_grad_flow

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _ctx(masks, s_logits=None, t_logits=None, ignore_index=255):
    aux = {} if s_logits is None else {"logits": (s_logits, t_logits)}
    return DistillContext(masks=masks, aux=aux, ignore_index=ignore_index)


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def _dot(u, v):
    return sum(a * b for a, b in zip(u, v))


def _unit(v):
    n = math.sqrt(_dot(v, v))
    return [a / n for a in v]


# --------------------------------------------------------------------------- registry and defaults
def test_registry_defaults_and_bad_kwargs():
    assert "cirkd" in available_losses()
    m = build_loss("cirkd", student_channels=4, teacher_channels=6, num_classes=19)
    assert isinstance(m, CIRKD)
    # train_cirkd.py defaults (Cityscapes scripts pass no loss flags)
    assert (m.lambda_kd, m.lambda_minibatch_pixel, m.lambda_memory_pixel, m.lambda_memory_region) == (1, 1, 0.1, 0.1)
    assert (m.kd_temperature, m.contrast_temperature, m.contrast_kd_temperature) == (1, 0.1, 1)
    assert m.pixel_queue.shape == (19, 20000, 6) and m.region_queue.shape == (19, 2000, 6)
    assert (m.pixel_contrast_per_class, m.region_contrast_per_class) == (4096 // 19 + 1, 1024 // 19 + 1) == (216, 54)
    assert m.pixel_update_freq == 16 and m.pixel_sampling == "class"
    assert torch.allclose(m.pixel_queue.norm(dim=2), torch.ones(19, 20000))  # random unit vectors at start
    # projection head: conv1x1 (no bias) – BN – ReLU – conv1x1 (no bias)
    assert [type(x).__name__ for x in m.align] == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d"]
    assert m.align[0].bias is None and m.align[3].bias is None
    # the bank is state: it is in the state dict, with its pointers
    assert {"pixel_queue", "pixel_queue_ptr", "region_queue", "region_queue_ptr", "bank_updates"} <= set(m.state_dict())
    # same seed → same bank, another seed → another
    m2 = build_loss("cirkd", student_channels=4, teacher_channels=6, num_classes=19)
    assert torch.equal(m.pixel_queue, m2.pixel_queue)
    with pytest.raises(TypeError, match=r"^build_loss\('cirkd'\): .*lambda_kdd"):
        build_loss("cirkd", student_channels=4, teacher_channels=6, num_classes=3, lambda_kdd=1)
    with pytest.raises(ValueError, match=r"^cirkd needs num_classes .*got None$"):
        build_loss("cirkd", student_channels=4, teacher_channels=6)
    with pytest.raises(ValueError, match=r"^cirkd pixel_sampling must be one of \('class', 'official'\), got 'x'$"):
        build_loss("cirkd", student_channels=4, teacher_channels=6, num_classes=3, pixel_sampling="x")
    with pytest.raises(ValueError, match=r"^cirkd pixel_update_freq \(16\) must not exceed pixel_memory_size \(8\)$"):
        build_loss("cirkd", student_channels=4, teacher_channels=6, num_classes=3, pixel_memory_size=8)
    with pytest.raises(ValueError, match=r"^cirkd contrast_temperature must be > 0, got 0$"):
        build_loss("cirkd", student_channels=4, teacher_channels=6, num_classes=3, contrast_temperature=0)
    # no memory terms: no bank, no projection head (no unused parameters under DDP), num_classes not needed
    m3 = build_loss("cirkd", student_channels=4, teacher_channels=6, lambda_memory_pixel=0, lambda_memory_region=0)
    assert not list(m3.parameters()) and "pixel_queue" not in m3.state_dict()


# --------------------------------------------------------------------------- eq. (1) logit KD
def test_logit_kd_hand_value():
    m = build_loss("cirkd", student_channels=2, teacher_channels=2, num_classes=2, lambda_minibatch_pixel=0,
                   lambda_memory_pixel=0, lambda_memory_region=0)
    zs = torch.zeros(1, 2, 1, 2)  # uniform student
    zt = torch.tensor([[[[math.log(3.0), 0.0]], [[0.0, 0.0]]]])  # pixel 0: p_t = (3/4, 1/4); pixel 1: uniform
    f = torch.randn(1, 2, 1, 2)
    out = m(f, f, _ctx(None, zs, zt))
    expected = (_kl([0.75, 0.25], [0.5, 0.5]) + 0.0) / 2  # mean over the 2 pixels, T = 1
    assert set(out) == {"loss_kd"} and out["loss_kd"].item() == pytest.approx(expected, rel=1e-6)
    m.kd_temperature = 2.0  # T² (σ(z/T) both sides)
    pt = _softmax([math.log(3.0) / 2, 0.0])
    assert m(f, f, _ctx(None, zs, zt))["loss_kd"].item() == pytest.approx(4 * _kl(pt, [0.5, 0.5]) / 2, rel=1e-6)


# --------------------------------------------------------------------------- eq. (2)–(3) mini-batch p2p
def test_minibatch_pixel_to_pixel_hand_values():
    """Student pixels all one direction (uniform rows), teacher pixels (e1, e2) in both images: each of the
    B² = 4 pairs × 2 rows is KL(σ((1, 0)/τ) ‖ uniform) = log 2 − H(p), p = σ(10)."""
    m = build_loss("cirkd", student_channels=2, teacher_channels=2, num_classes=2, lambda_kd=0,
                   lambda_memory_pixel=0, lambda_memory_region=0)
    s = torch.stack([torch.tensor([[[3.0, 5.0]], [[0.0, 0.0]]])] * 2)  # [2, 2, 1, 2]: every pixel along e1
    t = torch.stack([torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])] * 2)  # pixel 0 = e1, pixel 1 = e2 (scale-free)
    p = 1 / (1 + math.exp(-10.0))
    expected = math.log(2) + p * math.log(p) + (1 - p) * math.log(1 - p)
    out = m(s, t, None)
    assert set(out) == {"loss_batch_p2p"} and out["loss_batch_p2p"].item() == pytest.approx(expected, rel=1e-5)
    # student = teacher (up to per-pixel scale): zero
    assert m(t * 3, t, None)["loss_batch_p2p"].item() == pytest.approx(0.0, abs=1e-7)


def test_minibatch_pairs_include_cross_image_and_self_pairs():
    """A generic 2-image batch against the formula written out pair by pair (τ = 0.1, row-mean, /B²)."""
    torch.manual_seed(3)
    s, t = torch.randn(2, 3, 1, 3), torch.randn(2, 4, 1, 3)
    m = build_loss("cirkd", student_channels=3, teacher_channels=4, num_classes=2, lambda_kd=0,
                   lambda_memory_pixel=0, lambda_memory_region=0)
    sv = [[_unit(s[b, :, 0, a].tolist()) for a in range(3)] for b in range(2)]
    tv = [[_unit(t[b, :, 0, a].tolist()) for a in range(3)] for b in range(2)]
    per_pair = {}
    for i in range(2):
        for j in range(2):
            rows = [_kl(_softmax([_dot(tv[i][a], tv[j][q]) / 0.1 for q in range(3)]),
                        _softmax([_dot(sv[i][a], sv[j][q]) / 0.1 for q in range(3)])) for a in range(3)]
            per_pair[i, j] = sum(rows) / 3
    expected = sum(per_pair.values()) / 4
    assert m(s, t, None)["loss_batch_p2p"].item() == pytest.approx(expected, rel=1e-5)
    assert per_pair[0, 1] > 0 and per_pair[0, 0] > 0  # both kinds of pair contribute


# --------------------------------------------------------------------------- eq. (5)–(7) memory relations
def _memory_module(**kw):
    args = dict(student_channels=2, teacher_channels=2, num_classes=2, align="identity", lambda_kd=0,
                lambda_minibatch_pixel=0, lambda_memory_pixel=1.0, lambda_memory_region=1.0, pixel_memory_size=2,
                region_memory_size=2, pixel_update_freq=1, pixel_contrast_size=100, region_contrast_size=100)
    args.update(kw)
    return build_loss("cirkd", **args)


def test_memory_pixel_and_region_relations_hand_values():
    """Eval mode (no bank update), every slot sampled (the column order does not change the KL): anchors are
    the labelled pixels only, relations to V_p / V_r with τ = 0.1, T_c = 1."""
    m = _memory_module()
    m.eval()
    pix = [[1.0, 0.0], [0.0, 1.0], _unit([1.0, 1.0]), _unit([1.0, -1.0])]  # Q_p[0, 0:2], Q_p[1, 0:2]
    reg = [[1.0, 0.0], _unit([1.0, 2.0]), [-1.0, 0.0], _unit([2.0, -1.0])]
    m.pixel_queue.copy_(torch.tensor(pix).reshape(2, 2, 2))
    m.region_queue.copy_(torch.tensor(reg).reshape(2, 2, 2))
    # 1×3 map; pixel 2 ignored (its wildly different features must not count)
    t = torch.tensor([[[[1.0, 0.5, -7.0]], [[0.2, 1.0, 9.0]]]])
    s = torch.tensor([[[[0.3, 1.0, 5.0]], [[1.0, -0.4, -5.0]]]])
    masks = torch.tensor([[[0, 1, 255]]])
    out = m(s, t, _ctx(masks))

    def rel(bank):
        total = 0.0
        for a in range(2):  # the two labelled pixels
            ta, sa = _unit(t[0, :, 0, a].tolist()), _unit(s[0, :, 0, a].tolist())
            total += _kl(_softmax([_dot(ta, v) / 0.1 for v in bank]), _softmax([_dot(sa, v) / 0.1 for v in bank]))
        return total / 2

    assert out["loss_memory_p2p"].item() == pytest.approx(rel(pix), rel=1e-5)
    assert out["loss_memory_p2r"].item() == pytest.approx(rel(reg), rel=1e-5)
    assert int(m.bank_updates) == 0 and torch.equal(m.pixel_queue, torch.tensor(pix).reshape(2, 2, 2))
    # the contrast KD temperature T_c divides both sides' logits and multiplies by T_c²
    m.contrast_kd_temperature = 2.0
    pt = lambda a, bank: _softmax([_dot(_unit(t[0, :, 0, a].tolist()), v) / 0.2 for v in bank])  # noqa: E731
    ps = lambda a, bank: _softmax([_dot(_unit(s[0, :, 0, a].tolist()), v) / 0.2 for v in bank])  # noqa: E731
    exp2 = 4 * sum(_kl(pt(a, reg), ps(a, reg)) for a in range(2)) / 2
    assert m(s, t, _ctx(masks))["loss_memory_p2r"].item() == pytest.approx(exp2, rel=1e-5)
    # λ's scale the returned terms; a zero λ drops its term
    m.contrast_kd_temperature = 1.0
    m.lambda_memory_pixel, m.lambda_memory_region = 0.1, 0.0
    out = m(s, t, _ctx(masks))
    assert set(out) == {"loss_memory_p2p"} and out["loss_memory_p2p"].item() == pytest.approx(0.1 * rel(pix), rel=1e-5)


def test_contrast_sets_take_the_same_slots_of_every_class():
    m = _memory_module(pixel_memory_size=6, region_memory_size=4, pixel_contrast_size=4, region_contrast_size=2)
    assert (m.pixel_contrast_per_class, m.region_contrast_per_class) == (3, 2)  # size // K + 1
    m.pixel_queue.copy_(torch.arange(24.0).reshape(2, 6, 2))
    v_p, v_r = m.contrast_sets()
    assert v_p.shape == (6, 2) and v_r.shape == (4, 2)
    slots = (v_p[:3, 0] / 2).long()  # class 0 rows come first, then class 1 at the same slots
    assert len(set(slots.tolist())) == 3 and torch.equal(v_p[3:, 0], v_p[:3, 0] + 12)
    assert torch.equal(m.contrast_sets()[0], v_p)  # a function of (seed, bank updates): reproducible


def test_all_ignored_batch_gives_zero_memory_terms_with_a_graph():
    m = _memory_module()
    s = torch.randn(1, 2, 2, 2, requires_grad=True)
    out = m(s, torch.randn(1, 2, 2, 2), _ctx(torch.full((1, 2, 2), 255)))
    assert out["loss_memory_p2p"].item() == 0 and out["loss_memory_p2r"].item() == 0
    sum(out.values()).backward()
    assert s.grad is not None
    assert int(m.bank_updates) == 1 and m.pixel_queue_ptr.tolist() == [0, 0]  # nothing to enqueue


# --------------------------------------------------------------------------- eq. (4) bank update
def _onehot_embedding(n_img, a):
    """Teacher embedding [n_img, n_img·a, 1, a]: image i, position p is the basis vector e_{i·a+p}."""
    e = torch.eye(n_img * a)
    return e.reshape(n_img, a, n_img * a).permute(0, 2, 1).reshape(n_img, n_img * a, 1, a)


def test_bank_update_order_and_pointer_wrap_around():
    """3 images of 1×4 pixels, classes {0, 1}, N_p = 5, 2 pixels per class and image, N_r = 2.
    image 0: 0 0 0 1 | image 1: 1 1 255 0 | image 2: 0 0 1 1  (processed in this order, classes ascending)."""
    m = build_loss("cirkd", student_channels=12, teacher_channels=12, num_classes=2, pixel_memory_size=5,
                   region_memory_size=2, pixel_update_freq=2)
    init_p = m.pixel_queue.clone()
    labels = torch.tensor([[[0, 0, 0, 1]], [[1, 1, 255, 0]], [[0, 0, 1, 1]]])
    emb = _onehot_embedding(3, 4)
    e = torch.eye(12)
    m.update_memory(emb, labels)
    # region queue: one slot per (image, class); image 2 wraps to slot 0 and overwrites image 0's mean
    mean = lambda *idx: F.normalize(e[list(idx)].sum(0), dim=0)  # noqa: E731
    assert torch.allclose(m.region_queue[0, 0], mean(8, 9)) and torch.allclose(m.region_queue[0, 1], mean(7))
    assert torch.allclose(m.region_queue[1, 0], mean(10, 11)) and torch.allclose(m.region_queue[1, 1], mean(4, 5))
    assert m.region_queue_ptr.tolist() == [1, 1]
    # pixel queue, class 0: image 0 → slots 0,1 (2 of its 3 pixels); image 1 → slot 2 (its one pixel);
    # image 2: 3 + 2 ≥ 5 → the last two slots 3,4 and the pointer back to 0
    q0 = m.pixel_queue[0]
    assert {int(v.argmax()) for v in q0[:2]} < {0, 1, 2} and len({int(v.argmax()) for v in q0[:2]}) == 2
    assert torch.equal(q0[2], e[7]) and {int(v.argmax()) for v in q0[3:]} == {8, 9}
    # class 1: image 0 → slot 0; image 1 → slots 1,2; image 2: 3 + 2 ≥ 5 → slots 3,4, pointer 0
    q1 = m.pixel_queue[1]
    assert torch.equal(q1[0], e[3]) and {int(v.argmax()) for v in q1[1:3]} == {4, 5}
    assert {int(v.argmax()) for v in q1[3:]} == {10, 11}
    assert m.pixel_queue_ptr.tolist() == [0, 0] and int(m.bank_updates) == 1
    # a second update continues from the pointers: one image, class 0 only (1 pixel) → slot 0 of class 0
    m.update_memory(e[0].reshape(1, 12, 1, 1), torch.tensor([[[0]]]))
    assert m.pixel_queue_ptr.tolist() == [1, 0] and m.region_queue_ptr.tolist() == [0, 1]
    assert not torch.equal(m.pixel_queue, init_p)
    assert torch.allclose(m.pixel_queue.norm(dim=2), torch.ones(2, 5))


def test_official_pixel_indexing_switch():
    """[M] uses randperm(n_c) as positions in the whole image: image 1's one class-0 pixel (position 3) is
    stored as position 0's embedding (a class-1 pixel) — reproduced by pixel_sampling='official'."""
    labels = torch.tensor([[[1, 1, 255, 0]]])
    emb = _onehot_embedding(1, 4)
    off = build_loss("cirkd", student_channels=4, teacher_channels=4, num_classes=2, pixel_memory_size=4,
                     region_memory_size=2, pixel_update_freq=2, pixel_sampling="official")
    off.update_memory(emb, labels)
    assert torch.equal(off.pixel_queue[0, 0], torch.eye(4)[0])  # class 0 slot holds position 0 (class 1)
    cls = build_loss("cirkd", student_channels=4, teacher_channels=4, num_classes=2, pixel_memory_size=4,
                     region_memory_size=2, pixel_update_freq=2)
    cls.update_memory(emb, labels)
    assert torch.equal(cls.pixel_queue[0, 0], torch.eye(4)[3])  # the class's own pixel
    assert torch.equal(off.region_queue, cls.region_queue)  # region pooling is the same in both


def test_bank_updates_only_in_training_mode_and_labels_are_resized():
    m = _memory_module(pixel_memory_size=8, pixel_update_freq=4)
    s, t = torch.randn(2, 2, 2, 2), torch.randn(2, 2, 2, 2)
    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    masks[:, :, 4:] = 1  # right half class 1 → nearest-resized to 2×2: column 1 is class 1
    m.eval()
    m(s, t, _ctx(masks))
    assert int(m.bank_updates) == 0
    m.train()
    m(s, t, _ctx(masks))
    assert int(m.bank_updates) == 1 and m.pixel_queue_ptr.tolist() == [4, 4]  # 2 pixels of each class × 2 images


# --------------------------------------------------------------------------- eq. (4): the vectorised update
def _loop_update(self, teacher_emb, labels, ignore_index=255):
    """The reference: CIRKD.update_memory as it was before the vectorised form (commit a7f87c2), a Python loop
    over images and classes, kept verbatim (``concat_all_gather`` looked up on the module, so that a test can
    stand in for the other processes)."""
    keys = cirkd_mod.concat_all_gather(teacher_emb.detach().float().contiguous())
    labs = cirkd_mod.concat_all_gather(labels.contiguous())
    n, c, h, w = keys.shape
    a, k = h * w, self.num_classes
    lab_cpu = labs.reshape(n, a).cpu()
    bad = lab_cpu[(lab_cpu != ignore_index) & ((lab_cpu < 0) | (lab_cpu >= k))]
    if bad.numel():
        raise ValueError(f"cirkd: context.masks holds label {int(bad[0])}, outside 0..{k - 1} (num_classes={k}) "
                         f"and not the ignore index {ignore_index}")
    flat = keys.reshape(n, c, a)
    lab_dev = labs.reshape(n, a).long()
    cls = torch.where(lab_dev == ignore_index, torch.full_like(lab_dev, k), lab_dev)
    onehot = F.one_hot(cls, k + 1).to(flat.dtype).transpose(1, 2)  # [N, K+1, A]
    sums = torch.bmm(onehot, flat.transpose(1, 2))[:, :k]  # [N, K, C]
    means = F.normalize(sums / onehot[:, :k].sum(2, keepdim=True).clamp_min(1.0), dim=2).reshape(n * k, c)

    gen = cirkd_mod._seeded_generator(self.seed, int(self.bank_updates), cirkd_mod._ENQUEUE)
    ptr_r, ptr_p = self.region_queue_ptr.tolist(), self.pixel_queue_ptr.tolist()
    n_r, n_p, m = self.region_memory_size, self.pixel_memory_size, self.pixel_update_freq
    region_plan = {}  # queue slot (flat) → source row; later writes replace earlier ones
    pixel_plan = {}
    for i in range(n):
        for cl in torch.unique(lab_cpu[i]).tolist():  # ascending, as torch.unique in [M]
            if cl == ignore_index:
                continue
            idx = (lab_cpu[i] == cl).nonzero().squeeze(1)
            region_plan[cl * n_r + ptr_r[cl]] = i * k + cl
            ptr_r[cl] = (ptr_r[cl] + 1) % n_r
            num = idx.numel()
            perm = torch.randperm(num, generator=gen)
            kk = min(num, m)
            pos = idx[perm[:kk]] if self.pixel_sampling == "class" else perm[:kk]  # D1
            p = ptr_p[cl]
            if p + kk >= n_p:  # [M]: the last kk slots, pointer back to 0
                slots = range(n_p - kk, n_p)
                ptr_p[cl] = 0
            else:
                slots = range(p, p + kk)
                ptr_p[cl] = (p + kk) % n_p
            for s_, q in zip(slots, pos.tolist()):
                pixel_plan[cl * n_p + s_] = i * a + q
    dev = self.region_queue.device
    if region_plan:
        dst = torch.tensor(list(region_plan), dtype=torch.long, device=dev)
        src = torch.tensor(list(region_plan.values()), dtype=torch.long, device=means.device)
        self.region_queue.view(-1, c).index_copy_(0, dst, means[src].to(dev))
    if pixel_plan:
        dst = torch.tensor(list(pixel_plan), dtype=torch.long, device=dev)
        src = torch.tensor(list(pixel_plan.values()), dtype=torch.long, device=flat.device)
        rows = flat.transpose(1, 2).reshape(n * a, c)[src]
        self.pixel_queue.view(-1, c).index_copy_(0, dst, F.normalize(rows, dim=1).to(dev))
    self.region_queue_ptr.copy_(torch.tensor(ptr_r, dtype=torch.long))
    self.pixel_queue_ptr.copy_(torch.tensor(ptr_p, dtype=torch.long))
    self.bank_updates += 1


_BANK = ("pixel_queue", "pixel_queue_ptr", "region_queue", "region_queue_ptr", "bank_updates")


def _random_batch(gen, n, k, h, w, c, n_present, ignore_frac=0.2):
    """Labels of ``n_present`` of the k classes (the others missing) with ignored pixels, unit embeddings."""
    present = torch.randperm(k, generator=gen)[:n_present]
    labels = present[torch.randint(0, n_present, (n, h, w), generator=gen)]
    labels[torch.rand(n, h, w, generator=gen) < ignore_frac] = 255
    return F.normalize(torch.randn(n, c, h, w, generator=gen), dim=1), labels


@pytest.mark.parametrize("pixel_sampling", ["class", "official"])
def test_vectorised_update_is_the_loop_bit_for_bit(pixel_sampling):
    """Random batches, several updates each: queues, pointers and counts equal (torch.equal) to the loop's.
    The cases wrap both queues around (several times per update in the small ones), leave classes out, hold
    ignored pixels, one-pixel classes (no random draw) and classes larger than pixel_update_freq."""
    gen = torch.Generator().manual_seed(0)
    cases = [  # (images, classes, h, w, N_p, N_r, pixels per class and image, classes present)
        (3, 4, 2, 3, 5, 2, 2, 2), (5, 6, 3, 4, 7, 3, 3, 4), (4, 11, 8, 8, 48, 3, 16, 7),
        (16, 11, 6, 6, 300, 20, 16, 9), (2, 3, 1, 1, 1, 1, 1, 2), (6, 5, 4, 4, 16, 4, 16, 3),
    ]
    wrapped = missing = 0
    for case_no, (n, k, h, w, n_p, n_r, m, n_present) in enumerate(cases):
        kw = dict(student_channels=4, teacher_channels=4, num_classes=k, pixel_memory_size=n_p,
                  region_memory_size=n_r, pixel_update_freq=m, pixel_sampling=pixel_sampling, seed=case_no)
        ref, new = CIRKD(**kw), CIRKD(**kw)
        for _ in range(4):
            emb, labels = _random_batch(gen, n, k, h, w, 4, n_present)
            before = new.pixel_queue_ptr.clone()
            _loop_update(ref, emb, labels)
            assert new.update_memory(emb, labels) == int(ref.bank_updates)
            for name in _BANK:
                assert torch.equal(getattr(new, name), getattr(ref, name)), (case_no, name)
            present = torch.zeros(k, dtype=torch.bool)
            present[labels[labels != 255].unique()] = True
            wrapped += int((new.pixel_queue_ptr < before)[present].sum())
            missing += int((~present).sum())
    assert wrapped > 10 and missing > 10  # the cases did exercise wrap-around and missing classes


def test_vectorised_update_on_a_gathered_batch(monkeypatch):
    """Under DDP the update sees every process's images (rank order): with concat_all_gather standing in for
    three more ranks, the vectorised update equals the loop's on the gathered batch, bit for bit."""
    gen = torch.Generator().manual_seed(1)
    others = [_random_batch(gen, 2, 5, 4, 4, 6, 3) for _ in range(3)]

    def gather(x):  # this process is rank 1 of 4
        parts = [o[0] if x.dim() == 4 else o[1] for o in others]
        return torch.cat(parts[:1] + [x] + parts[1:])

    monkeypatch.setattr(cirkd_mod, "concat_all_gather", gather)
    for sampling in ("class", "official"):
        kw = dict(student_channels=6, teacher_channels=6, num_classes=5, pixel_memory_size=20, region_memory_size=5,
                  pixel_update_freq=4, pixel_sampling=sampling)
        ref, new = CIRKD(**kw), CIRKD(**kw)
        for _ in range(3):
            emb, labels = _random_batch(gen, 2, 5, 4, 4, 6, 4)
            _loop_update(ref, emb, labels)
            new.update_memory(emb, labels)
            for name in _BANK:
                assert torch.equal(getattr(new, name), getattr(ref, name)), (sampling, name)
        assert int(new.region_queue_ptr.sum()) > 0 and int(new.bank_updates) == 3


def test_randperm_heads_draw_what_randperm_draws():
    """The vectorised shuffle: each row is randperm(n)[:heads] of a sequential run on one generator."""
    sizes = torch.tensor([1, 2, 16, 17, 3, 1, 300, 5, 64])
    g = torch.Generator().manual_seed(5)
    expected = [torch.randperm(int(n), generator=g)[:16] for n in sizes]
    heads = cirkd_mod._randperm_heads(sizes, 16, torch.Generator().manual_seed(5))
    assert heads.shape == (9, 16)
    for row, exp in zip(heads, expected):
        assert torch.equal(row[: exp.numel()], exp)
    assert cirkd_mod._randperm_heads(torch.tensor([1, 1]), 16, g).tolist() == [[0], [0]]  # no draw at all
    assert cirkd_mod._randperm_heads(torch.zeros(0, dtype=torch.long), 16, g).shape == (0, 0)


# --------------------------------------------------------------------------- gradients
def test_gradients_reach_the_student_and_never_the_teacher():
    torch.manual_seed(0)
    m = build_loss("cirkd", student_channels=3, teacher_channels=5, num_classes=3, pixel_memory_size=32,
                   region_memory_size=4)
    zs = torch.randn(2, 3, 4, 4, requires_grad=True)
    zt = torch.randn(2, 3, 4, 4)
    ctx = _ctx(torch.randint(0, 3, (2, 8, 8)), zs, zt)
    out = check_grad_flow(m, torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4), ctx)
    assert set(out) == {"loss_kd", "loss_batch_p2p", "loss_memory_p2p", "loss_memory_p2r"}
    assert all(torch.isfinite(v) and v > 0 for v in out.values())
    assert zs.grad is not None and zs.grad.abs().sum() > 0 and zt.grad is None
    assert all(p.grad is not None for p in m.align.parameters())  # the projection head learns
    assert not m.pixel_queue.requires_grad and m.pixel_queue.grad is None


def test_bf16_autocast_computes_relations_in_float32():
    m = build_loss("cirkd", student_channels=3, teacher_channels=5, num_classes=3, pixel_memory_size=32,
                   region_memory_size=4)
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    zs = torch.randn(2, 3, 4, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(s, torch.randn(2, 5, 4, 4).bfloat16(), _ctx(torch.randint(0, 3, (2, 4, 4)), zs, torch.randn(2, 3, 4, 4)))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())
    assert m.pixel_queue.dtype == torch.float32
    sum(out.values()).backward()
    assert s.grad is not None


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_are_one_line_errors():
    m = build_loss("cirkd", student_channels=3, teacher_channels=5, num_classes=3, pixel_memory_size=32,
                   region_memory_size=4)
    z = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError) as e:
        m(torch.randn(1, 3, 4, 4), torch.randn(1, 5, 4, 4), _ctx(torch.zeros(1, 4, 4, dtype=torch.long), z, z))
    msg = str(e.value)
    assert msg == ("cirkd: the cross-image pixel-to-pixel term needs at least 2 images per batch on each process, "
                   "got student features of shape (1, 3, 4, 4); raise train.batch_size or set "
                   "lambda_minibatch_pixel=0") and "\n" not in msg
    single = build_loss("cirkd", student_channels=3, teacher_channels=5, num_classes=3, pixel_memory_size=32,
                        region_memory_size=4, lambda_minibatch_pixel=0)
    assert "loss_batch_p2p" not in single(torch.randn(1, 3, 4, 4), torch.randn(1, 5, 4, 4),
                                          _ctx(torch.zeros(1, 4, 4, dtype=torch.long), z, z))
    s, t, z2 = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4), torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"^cirkd needs ground-truth labels in context.masks \(\[B, H, W\]\)"):
        m(s, t, _ctx(None, z2, z2))
    with pytest.raises(ValueError, match=r"^cirkd's logit KD needs context.aux\['logits'\]"):
        m(s, t, _ctx(torch.zeros(2, 4, 4, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"^cirkd: student and teacher logits must be \[B, K, h, w\] of one shape, "
                                         r"got student \(2, 3, 4, 4\) and teacher \(2, 4, 4, 4\)$"):
        m(s, t, _ctx(torch.zeros(2, 4, 4, dtype=torch.long), z2, torch.randn(2, 4, 4, 4)))
    with pytest.raises(ValueError, match=r"^cirkd: context.masks must be \[B, H, W\] with B=2, got \(3, 4, 4\)$"):
        m(s, t, _ctx(torch.zeros(3, 4, 4, dtype=torch.long), z2, z2))
    with pytest.raises(ValueError, match=r"^cirkd: context.masks holds label 7, outside 0..2 \(num_classes=3\) and "
                                         r"not the ignore index 255$"):
        m(s, t, _ctx(torch.full((2, 4, 4), 7), z2, z2))
    with pytest.raises(ValueError, match=r"^CIRKD was built for student C=3, teacher C=5, got student \(2, 4, 4, 4\)"):
        m(torch.randn(2, 4, 4, 4), t, _ctx(torch.zeros(2, 4, 4, dtype=torch.long), z2, z2))


# --------------------------------------------------------------------------- task pairs and the Distiller
def _seg_model_cfg(student, teacher):
    seg = get_task("segmentation")
    return seg, from_dict(seg.model_config_cls, {"student": student, "teacher": teacher}, "model")


def test_segmentation_default_pairs_and_detection_refusal():
    seg, tiny = _seg_model_cfg({"arch": "tiny", "width": 4, "num_classes": 11},
                               {"arch": "tiny", "width": 8, "num_classes": 11})
    (pair,) = seg.default_pairs(tiny, "cirkd", {})
    assert (pair.student, pair.teacher_spec, pair.loss) == ("head", "head", "cirkd")
    assert pair.aux == {"logits": ("classifier", "classifier")} and pair.kwargs == {"num_classes": 11}
    _, dl = _seg_model_cfg({"arch": "deeplabv3", "backbone": "mobilenetv2", "num_classes": 19},
                           {"arch": "deeplabv3", "backbone": "resnet101", "num_classes": 19})
    dl.distill_decoder = True  # moot for cirkd: still the one embedding pair
    (pair,) = seg.default_pairs(dl, "cirkd", {"lambda_memory_pixel": 0.01})
    assert (pair.student, pair.teacher_spec) == ("decoder", "decoder")
    assert pair.kwargs == {"lambda_memory_pixel": 0.01, "num_classes": 19}
    det = get_task("detection")
    dm = from_dict(det.model_config_cls, {"num_classes": 2}, "model")
    with pytest.raises(ConfigError, match=r"^distill.method: cirkd relates pixel embeddings by their ground-truth "
                                          r"classes .* it runs on segmentation only$"):
        det.default_pairs(dm, "cirkd", {})


def test_through_the_distiller_with_the_task_pairs_and_ignore_index():
    torch.manual_seed(0)
    seg, mc = _seg_model_cfg({"arch": "tiny", "width": 4, "num_classes": 3},
                             {"arch": "tiny", "width": 8, "num_classes": 3, "random_init": True})
    s = seg.build_model(mc, "student")
    t = seg.build_model(mc, "teacher")
    pairs = seg.default_pairs(mc, "cirkd", {"pixel_memory_size": 64, "region_memory_size": 4})
    x = torch.rand(2, 3, 16, 16)
    y = torch.randint(0, 3, (2, 16, 16))
    y[:, :4] = 250
    seg.ignore_index = 250  # as build_dataset sets it from data.ignore_index
    d = Distiller(s, t, pairs, task_loss=seg.task_loss(), example_inputs=(x,), ignore_index=250)
    loss_mod = d.kd_losses["0|head"]
    assert isinstance(loss_mod, CIRKD) and loss_mod.num_classes == 3 and loss_mod.pixel_queue.shape == (3, 64, 32)
    out = d(x, targets=y)
    names = {k for k in out if k.startswith("kd/")}
    assert names == {f"kd/head/{n}" for n in ("loss_kd", "loss_batch_p2p", "loss_memory_p2p", "loss_memory_p2r")}
    out["loss"].backward()
    assert all(p.grad is not None for p in d.student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in d.teacher.parameters())
    assert int(loss_mod.bank_updates) == 1
    # the Distiller hands its ignore_index to the loss: with the default 255, label 250 is out of range
    d255 = Distiller(s, t, pairs, task_loss=lambda o, tg: o.mean() * 0, example_inputs=(x,))
    with pytest.raises(ValueError, match="holds label 250, outside 0..2"):
        d255(x, targets=y)


# --------------------------------------------------------------------------- the engine
@pytest.fixture(scope="module")
def digits_setup(tmp_path_factory):
    """Tiny digits data (32 px canvases) and a (random) TinySegNet width-8 teacher checkpoint."""
    from densekd.data.digits import make_digits_dataset
    from densekd.models.segmentation import TinySegNet

    root = tmp_path_factory.mktemp("cirkd_digits")
    make_digits_dataset(root / "digits", seed=0, n_train=8, n_val=4, canvas=32, scale=(8, 14))
    torch.manual_seed(0)
    teacher = str(root / "teacher.pth")
    torch.save(TinySegNet(8, 11).state_dict(), teacher)
    return str(root / "digits"), teacher


def _overrides(digits, teacher, out, **kw):
    ov = [f"data.root={digits}", f"model.teacher.checkpoint={teacher}", f"output_dir={out}",
          "model.student.width=4", "model.teacher.width=8", "data.crop_size=[32,32]", "train.batch_size=2",
          "train.eval_every=-1", "train.log_every=1", "distill.method=cirkd", "distill.kwargs={}", "distill.pairs=null",
          "distill.kwargs.pixel_memory_size=48", "distill.kwargs.region_memory_size=3"]
    return ov + [f"{k}={v}" for k, v in kw.items()]


def test_exact_resume_with_the_bank(digits_setup, tmp_path):
    """6 iterations == 3 + resume + 3: student, projection head, bank and pointers bit-identical (the small
    bank wraps around several times; 8 images / batch 2 → the resume is mid-epoch, the run crosses one)."""
    digits, teacher = digits_setup
    cfg = os.path.join(ROOT, "configs", "compare", "demo_methods.yaml")
    step = {"train.schedule.type": "step", "train.schedule.steps": "[4]"}  # cosine would depend on max_iters
    densekd.train(cfg, _overrides(digits, teacher, tmp_path / "full", **{"train.max_iters": 6}, **step))
    densekd.train(cfg, _overrides(digits, teacher, tmp_path / "split", **{"train.max_iters": 3}, **step))
    t = densekd.engine.Trainer(cfg, _overrides(digits, teacher, tmp_path / "split", **{"train.max_iters": 6}, **step))
    assert t.iteration == 3
    t.run()
    full = torch.load(tmp_path / "full" / "checkpoint.pth", weights_only=True)
    split = torch.load(tmp_path / "split" / "checkpoint.pth", weights_only=True)
    for part in ("student", "kd_losses"):
        assert full[part].keys() == split[part].keys()
        for k in full[part]:
            assert torch.equal(full[part][k], split[part][k]), (part, k)
    kd = full["kd_losses"]
    assert int(kd["0|head.bank_updates"]) == 6
    assert kd["0|head.pixel_queue"].shape == (11, 48, 32) and kd["0|head.region_queue_ptr"].max() < 3
    fresh = build_loss("cirkd", student_channels=16, teacher_channels=32, num_classes=11, pixel_memory_size=48,
                       region_memory_size=3)
    assert not torch.equal(kd["0|head.pixel_queue"], fresh.pixel_queue)  # the bank was filled


def test_python_m_densekd_train_two_iterations(digits_setup, tmp_path):
    digits, teacher = digits_setup
    out = tmp_path / "cli"
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "densekd", "train", os.path.join(ROOT, "configs", "compare", "demo_methods.yaml"),
           *_overrides(digits, teacher, out, **{"train.max_iters": 2})]
    r = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = (out / "log.csv").read_text().splitlines()
    header = rows[0].split(",")
    for term in ("loss_kd", "loss_batch_p2p", "loss_memory_p2p", "loss_memory_p2r"):
        assert f"kd/head/{term}" in header
    assert len(rows) == 3 and (out / "student_final.pth").is_file()
    ck = torch.load(out / "checkpoint.pth", weights_only=True)
    assert int(ck["kd_losses"]["0|head.bank_updates"]) == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["distill"]["method"] == "cirkd"


DDP_SCRIPT = """
import os, sys
import torch
import torch.distributed as dist
from densekd import build_loss, DistillContext

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
emb = torch.randn(4, 6, 3, 3)                      # the whole batch; rank r gets images 2r, 2r+1
labels = torch.randint(0, 3, (4, 3, 3)); labels[0, 0] = 255
s = torch.randn(4, 5, 3, 3)
m = build_loss("cirkd", student_channels=5, teacher_channels=6, num_classes=3, pixel_memory_size=7,
               region_memory_size=3, pixel_update_freq=2, lambda_kd=0)
part = slice(2 * rank, 2 * rank + 2)
for step in range(2):
    out = m(s[part], emb[part] + step, DistillContext(masks=labels[part]))
    sum(out.values()).backward()
torch.save({k: v for k, v in m.state_dict().items() if "queue" in k or k == "bank_updates"},
           os.path.join(sys.argv[1], f"bank{rank}.pth"))
dist.barrier()
dist.destroy_process_group()
"""


def test_two_process_gloo_bank_is_gathered_and_identical(tmp_path):
    """Each rank feeds its half of a batch; both ranks must end with the same bank, and that bank must be the
    one a single process builds from the whole batch (rank-order all-gather, as the official code)."""
    (tmp_path / "run.py").write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, HERE]), "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "run.py"), str(tmp_path)]
    r = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(tmp_path / "bank0.pth", weights_only=True)
    b = torch.load(tmp_path / "bank1.pth", weights_only=True)
    assert a.keys() == b.keys() and {"pixel_queue", "region_queue", "pixel_queue_ptr"} <= set(a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # one process, the whole batch, the same two updates
    torch.manual_seed(0)
    emb = torch.randn(4, 6, 3, 3)
    labels = torch.randint(0, 3, (4, 3, 3))
    labels[0, 0] = 255
    ref = build_loss("cirkd", student_channels=5, teacher_channels=6, num_classes=3, pixel_memory_size=7,
                     region_memory_size=3, pixel_update_freq=2, lambda_kd=0)
    for step in range(2):
        ref.update_memory(F.normalize(emb + step, dim=1), labels)
    for k in a:
        assert torch.allclose(a[k].float(), ref.state_dict()[k].float(), atol=1e-6), k
    assert int(a["bank_updates"]) == 2
