"""Preparation stage of distillation losses that must be fitted on the frozen teacher before training.

A loss module opts in with ``needs_preparation = True``, a ``prepared`` property (saved in its state dict,
so a resumed run skips the stage) and ``prepare(teacher_feats_iter, head_loss_fn) -> list[float]``
(:class:`densekd.losses.maskd.MasKD`: the receptive tokens, :func:`~densekd.losses.maskd.fit_maskd_tokens`).
The engine calls :func:`prepare_for_trainer` at the start of ``Trainer.run`` (after a checkpoint was
resumed), before the first training step; ``densekd bench`` does not call ``run`` and so does not time it. For every such module (one per pair and level) it hands over:

* ``teacher_feats_iter``: re-iterable; each item is ``(F_T of this level, (inputs, targets))`` for one
  training batch (teacher in eval mode, no grad);
* ``head_loss_fn(masked_feat, (inputs, targets))``: the teacher's own task loss with ``masked_feat`` put in
  place of this level's output (a forward hook on the teacher module named by the pair's capture spec; the
  other levels unmasked). Task-agnostic: the loss is the task's ``teacher_task_loss(teacher, inputs,
  targets)`` if the task defines it, else :func:`default_teacher_task_loss` (the model's own loss dict for
  torchvision detectors, ``task.task_loss()`` on its output otherwise, e.g. cross-entropy for segmentation).

Gradients flow to the module's parameters through the frozen teacher layers after the replaced level.

**Preparation cache** (``train.prepare_cache: DIR``, off by default). What a module fits depends on the frozen
teacher, the training data and its order, the module's own initial state (its random initialisation: the seed) and
settings — not on ``distill.weight`` or anything else a weight grid varies; yet every run refits it (FreeKD: 2,000
prompt steps by default). With a cache folder, a module's fitted state is saved under a
key that hashes all of those (:func:`cache_key`): the module's class, its plain settings (``fit_steps``, ``fit_lr``,
…), its state before fitting, the teacher's weights, the captured level, a fingerprint of the data the caller
passes (the engine: the data config without its evaluation-only keys, seed, batch size and train-set size) and
the cache format; a later run with the same key loads it instead of fitting (the same parameters, bit for bit,
and the same frozen flags: tested against a run that fits). One process only: under torchrun the cache is not
used.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from ..assets import weights_sha256
from ..capture import _select, parse_spec, resolve_module
from ..distiller import task_losses
from ..errors import ConfigError


@contextlib.contextmanager
def loss_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.train()`` so it computes its losses (torchvision detectors), with every normalisation and
    dropout layer kept in eval mode (no running-statistics update, deterministic); restores the modes."""
    modes = {m: m.training for m in model.modules()}
    model.train()
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._NormBase, nn.modules.dropout._DropoutNd, nn.GroupNorm,
                          nn.LayerNorm)):
            m.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


def default_teacher_task_loss(task: Any, teacher: nn.Module, inputs: tuple[Any, ...], targets: Any) -> Tensor:
    """The teacher's task loss (a scalar with grad) on one batch, as the engine computes the student's."""
    task_loss = task.task_loss()
    with loss_mode(teacher):
        return sum(task_losses(teacher, type(teacher).__name__, task_loss, inputs, targets).values())  # type: ignore[return-value]


@contextlib.contextmanager
def replace_level(model: nn.Module, spec_text: str, level: int, value: Tensor) -> Iterator[None]:
    """Within the block, the ``level``-th level of capture spec ``spec_text`` (counted as
    :meth:`densekd.capture.FeatureCapture.levels` orders them: calls, then dict keys / tuple entries) is
    replaced by ``value`` in ``model``'s forward."""
    spec = parse_spec(spec_text)
    if spec.call is not None and spec.call < 0:
        raise ConfigError(f"capture spec {spec_text!r}: a negative call index cannot be replaced during the forward")
    module = resolve_module(model, spec.path)
    state = {"call": 0, "seen": 0}
    where = f"module {spec.path or '(model)'!r}"

    def hook(_m: nn.Module, _inp: Any, out: Any) -> Any:
        call = state["call"]
        state["call"] += 1
        if spec.call is not None and call != spec.call:
            return None
        entries = list(_select(out, spec.key, where))
        first = state["seen"]
        state["seen"] += len(entries)
        if not first <= level < first + len(entries):
            return None
        suffix = entries[level - first]
        if isinstance(out, Tensor):
            return value
        k = suffix[1:]  # ":key" → key
        if isinstance(out, Mapping):
            new = copy.copy(out)  # keeps OrderedDict order
            new[k] = value
            return new
        seq = list(out)
        seq[int(k)] = value
        return tuple(seq) if isinstance(out, tuple) else seq

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _TeacherLevelFeats:
    """Re-iterable over training batches: ``(F_T at one level, (inputs, targets))``."""

    def __init__(self, distiller: Any, pair_index: int, level: int, batches: Callable[[], Iterator[Any]]) -> None:
        self.d, self.i, self.level, self.batches = distiller, pair_index, level, batches

    def __iter__(self) -> Iterator[tuple[Tensor, tuple[tuple[Any, ...], Any]]]:
        pair = self.d.pairs[self.i]
        for inputs, targets in self.batches():
            feats = list(self.d.teacher_levels(inputs, pair.teacher_spec).values())
            yield feats[self.level], (inputs, targets)


#: what a cached preparation holds and how it is keyed; bump it when either changes
PREPARE_CACHE_FORMAT = 1
#: data keys that only say what is evaluated, not what trains (a tune run on dev and a report run on val fit alike)
EVAL_ONLY_DATA_KEYS = ("val_split", "val_ann", "val_images", "splits")


def _settings(mod: nn.Module) -> str:
    """The module's plain attributes (numbers, strings, flags, tuples of them), as sorted JSON."""
    plain = {k: v for k, v in vars(mod).items() if not k.startswith("_") and k != "training"
             and isinstance(v, (int, float, str, bool, tuple, type(None)))}
    return json.dumps(plain, sort_keys=True, default=str)


def cache_key(mod: nn.Module, teacher_hash: str, spec: str, level: int, data_key: str) -> str:
    """The preparation cache's key of one module (see the module docstring): sha256 hex."""
    text = (f"{PREPARE_CACHE_FORMAT}|{type(mod).__module__}.{type(mod).__qualname__}|{_settings(mod)}|{teacher_hash}|"
            f"{spec}|{level}|{data_key}|{weights_sha256(mod.state_dict())}")
    return hashlib.sha256(text.encode()).hexdigest()


class PrepareCache:
    """A folder of prepared KD modules (``<key>.pt``); ``data_key`` fingerprints the data they were fitted on."""

    def __init__(self, folder: str, data_key: str) -> None:
        self.folder, self.data_key = folder, data_key

    def path(self, key: str) -> str:
        return os.path.join(self.folder, f"{key[:32]}.pt")

    def load(self, key: str, mod: nn.Module, log: Callable[[str], None]) -> list[float] | None:
        """Restore ``mod`` from the cache (its state and frozen parameters); the fitting history, or None."""
        path = self.path(key)
        if not os.path.isfile(path):
            return None
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("key") != key:
                raise ValueError("its key differs")
            mod.load_state_dict(saved["state"])
        except Exception as e:  # noqa: BLE001 — a damaged entry is refitted, not fatal
            log(f"preparation cache: {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                f"fitting again")
            return None
        frozen = set(saved["frozen"])
        for name, p in mod.named_parameters():
            p.requires_grad_(name not in frozen)
            p.grad = None
        return [float(x) for x in saved["history"]]

    def store(self, key: str, mod: nn.Module, history: list[float]) -> str:
        os.makedirs(self.folder, exist_ok=True)
        path = self.path(key)
        tmp = f"{path}.tmp{os.getpid()}"
        state = {k: v.detach().cpu() for k, v in mod.state_dict().items()}
        frozen = [n for n, p in mod.named_parameters() if not p.requires_grad]
        torch.save({"format": PREPARE_CACHE_FORMAT, "key": key, "state": state, "frozen": frozen,
                    "history": [float(x) for x in history]}, tmp)
        os.replace(tmp, path)
        return path


def prepare_kd_losses(distiller: Any, task: Any, batches: Callable[[], Iterator[tuple[tuple[Any, ...], Any]]],
                      log: Callable[[str], None] = print, cache: PrepareCache | None = None) -> list[str]:
    """Run ``prepare`` on every KD module with ``needs_preparation`` that is not ``prepared`` yet.

    distiller: a built :class:`~densekd.Distiller`. task: the engine's task (``task_loss`` and optionally
    ``teacher_task_loss``). batches: a factory of fresh iterators of ``(inputs, targets)`` on the device.
    cache: where fitted modules are kept and looked up (module docstring, "Preparation cache"); None: always fit.
    Returns one message per prepared module (also passed to ``log``)."""
    todo = [(k, m) for k, m in distiller.kd_losses.items()
            if getattr(m, "needs_preparation", False) and not getattr(m, "prepared", False)]
    if not todo:
        return []
    teacher_loss = getattr(task, "teacher_task_loss", None)
    if teacher_loss is None:
        def teacher_loss(teacher, inputs, targets):  # noqa: E306
            return default_teacher_task_loss(task, teacher, inputs, targets)

    messages = []
    teacher_hash: str | None = None
    for i, pair in enumerate(distiller.pairs):
        keys = [k for k in distiller.kd_losses if k.split("|", 1)[0] == str(i)]  # level order (Distiller.setup)
        for j, key in enumerate(keys):
            mod = distiller.kd_losses[key]
            if not getattr(mod, "needs_preparation", False) or getattr(mod, "prepared", False):
                continue

            def head_loss_fn(masked: Tensor, target: Any, _spec=pair.teacher_spec, _j=j) -> Tensor:
                inputs, targets = target
                with replace_level(distiller.teacher, _spec, _j, masked):
                    loss = teacher_loss(distiller.teacher, inputs, targets)  # captures record only in the Distiller
                if not isinstance(loss, Tensor) or not loss.requires_grad:
                    raise ConfigError(
                        f"distill: preparing {type(mod).__name__} at {key!r}: the teacher's task loss does not "
                        f"depend on its {_spec!r} level (is the spec an output the teacher's head consumes?)")
                return loss

            ck = hist = None
            if cache is not None:
                if teacher_hash is None:
                    teacher_hash = weights_sha256(distiller.teacher.state_dict())
                ck = cache_key(mod, teacher_hash, pair.teacher_spec, j, cache.data_key)
                hist = cache.load(ck, mod, log)
            fit = hist is None
            if fit:
                with torch.enable_grad():
                    hist = mod.prepare(_TeacherLevelFeats(distiller, i, j, batches), head_loss_fn)
            how = ("on the frozen teacher" if fit else
                   f"from the preparation cache ({cache.path(ck)}: fitted earlier on the same teacher, data, seed and "
                   f"settings)")
            msg = (f"prepared {type(mod).__name__} at {key!r} {how}: {len(hist)} steps, "
                   f"objective {hist[0]:.4g} → {hist[-1]:.4g}")
            if fit and ck is not None:
                msg += f"; kept in the preparation cache ({cache.store(ck, mod, hist)})"
            log(msg)
            messages.append(msg)
    return messages


def prepare_for_trainer(trainer: Any) -> list[str]:
    """The engine's call (start of ``Trainer.run``, after resuming): prepares the Distiller's KD modules on
    the training data (its own epoch order, seed + 1, so the training order is untouched); under DDP rank
    0's prepared modules are broadcast to every rank."""
    from torch.utils.data import DataLoader

    from . import distributed as du
    from .data import ResumableBatchSampler, SeededDataset

    model = trainer.model
    if not any(getattr(m, "needs_preparation", False) and not getattr(m, "prepared", False)
               for m in getattr(model, "kd_losses", {}).values()):
        return []
    t = trainer.cfg.train
    sampler = ResumableBatchSampler(len(trainer.train_set), t.batch_size, trainer.world, trainer.rank,
                                    trainer.cfg.seed + 1)
    loader = DataLoader(SeededDataset(trainer.train_set), batch_sampler=sampler, num_workers=t.num_workers,
                        collate_fn=trainer.task.collate, generator=torch.Generator())

    def batches() -> Iterator[tuple[tuple[Any, ...], Any]]:
        epoch = 0
        while True:
            sampler.set_position(epoch, 0)
            for batch in loader:
                yield trainer.task.model_inputs(trainer.task.to_device(batch, trainer.device))
            epoch += 1

    def log(msg: str) -> None:
        if du.is_main():
            print(msg, flush=True)

    cache = None
    if t.prepare_cache and trainer.world == 1:
        from ..config import to_dict

        data = {k: v for k, v in to_dict(trainer.cfg.data).items() if k not in EVAL_ONLY_DATA_KEYS}
        data_key = json.dumps({"task": trainer.cfg.task, "data": data, "seed": trainer.cfg.seed,
                               "batch_size": t.batch_size, "train_size": len(trainer.train_set)},
                              sort_keys=True, default=str)
        cache = PrepareCache(t.prepare_cache, data_key)
    elif t.prepare_cache:
        log(f"train.prepare_cache: not used under torchrun ({trainer.world} processes fit on their own shards)")
    messages = prepare_kd_losses(model, trainer.task, batches, log=log, cache=cache)
    if trainer.world > 1:  # every rank fitted on its own shard: rank 0's result for all (DDP broadcast
        import torch.distributed as dist  # happened at wrapping, before this stage)

        for m in model.kd_losses.values():
            if getattr(m, "needs_preparation", False):
                for p in m.parameters():
                    dist.broadcast(p.data, 0)
    return messages
