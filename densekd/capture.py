"""Capture intermediate outputs of any ``nn.Module`` by dotted module name, with forward hooks.

A *spec* names what to capture::

    "backbone.body.layer3"          the module's output (a tensor)
    "backbone:0"                    key "0" of a dict output (torchvision FPN's OrderedDict), or index 0
                                    of a tuple/list output
    "backbone"                      a dict/tuple output without a key: every entry, each its own level
    "head.cls_logits[2]"            the third call of a module that runs several times per forward
                                    (a head shared across FPN levels); without [i], every call
    ":out"                          the model's own output (empty path), key "out"

:meth:`FeatureCapture.levels` turns a spec into an ordered ``{label: tensor}``: one entry per key and
per call, so a shared head or an FPN dict becomes one distillation level each.
"""
from __future__ import annotations

import contextlib
import difflib
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from torch import Tensor, nn

from .errors import UnknownNameError

_SPEC = re.compile(r"^(?P<path>[A-Za-z0-9_.]*)(?::(?P<key>[A-Za-z0-9_.\-]+))?(?:\[(?P<call>-?\d+)\])?$")


@dataclass(frozen=True)
class Spec:
    path: str
    key: str | None
    call: int | None
    text: str


def parse_spec(text: str) -> Spec:
    m = _SPEC.match(text.strip())
    if not m:
        raise ValueError(
            f"cannot parse capture spec {text!r}: expected 'dotted.module.path', optionally ':key' "
            f"and/or '[call index]', e.g. 'backbone:0' or 'head.cls_logits[2]'"
        )
    call = m.group("call")
    return Spec(m.group("path"), m.group("key"), None if call is None else int(call), text.strip())


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at ``path``; an unknown path fails with one line naming the closest real names."""
    modules = dict(model.named_modules())
    if path in modules:
        return modules[path]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
    if not close:  # fall back to names sharing the last component, then to the top level
        tail = path.rsplit(".", 1)[-1]
        close = [n for n in names if n.rsplit(".", 1)[-1] == tail][:5] or [n for n in names if "." not in n][:5]
    raise UnknownNameError(
        f"no module named {path!r} in {type(model).__name__}; closest: {', '.join(close) or '(none)'}"
    )


def _select(out: Any, key: str | None, where: str) -> "OrderedDict[str, Tensor]":
    """Flatten one call's output into {suffix: tensor}, honouring ``key``."""
    if key is not None:
        if isinstance(out, Mapping):
            if key in out:
                return OrderedDict([(f":{key}", out[key])])
            raise UnknownNameError(f"{where} output has no key {key!r}; keys: {', '.join(map(str, out.keys()))}")
        if isinstance(out, (tuple, list)):
            try:
                return OrderedDict([(f":{key}", out[int(key)])])
            except (ValueError, IndexError):
                raise UnknownNameError(
                    f"{where} output is a {type(out).__name__} of length {len(out)}; key {key!r} is not an index in it"
                ) from None
        raise UnknownNameError(f"{where} output is a {type(out).__name__}, not a dict or tuple: drop ':{key}'")
    if isinstance(out, Tensor):
        return OrderedDict([("", out)])
    if isinstance(out, Mapping):
        return OrderedDict((f":{k}", v) for k, v in out.items() if isinstance(v, Tensor))
    if isinstance(out, (tuple, list)):
        return OrderedDict((f":{i}", v) for i, v in enumerate(out) if isinstance(v, Tensor))
    raise TypeError(f"{where} returned {type(out).__name__}; expected a tensor, a dict or a tuple of tensors")


class StopForward(Exception):
    """Raised from a hook once everything a frozen network must provide has been captured."""


class FeatureCapture:
    """Forward hooks on the modules named by ``specs``; outputs are kept for the latest forward.

    ``stop_when_complete`` (used on the frozen teacher) raises :class:`StopForward` as soon as every
    hooked module has run ``expected_calls[path]`` times, so the network is not run past the captured
    layers (e.g. no detection post-processing). The caller catches it.
    """

    def __init__(self, model: nn.Module, specs: Iterable[str]) -> None:
        self.model = model
        self.specs: dict[str, Spec] = {}
        for s in specs:
            spec = parse_spec(s)
            self.specs[spec.text] = spec
        self._outputs: dict[str, list[Any]] = {}
        self._handles = []
        self.expected_calls: dict[str, int] | None = None
        self.stop_when_complete = False
        self.enabled = True  # hooks record only while enabled (the Distiller enables them in its forward)
        paths = sorted({s.path for s in self.specs.values()})
        for path in paths:
            module = resolve_module(model, path)
            self._handles.append(module.register_forward_hook(self._hook(path)))

    def _hook(self, path: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if not self.enabled:
                return
            self._outputs.setdefault(path, []).append(output)
            if self.stop_when_complete and self.expected_calls is not None and self._complete():
                raise StopForward()

        return hook

    def _complete(self) -> bool:
        assert self.expected_calls is not None
        return all(len(self._outputs.get(p, ())) >= n for p, n in self.expected_calls.items())

    def clear(self) -> None:
        self._outputs = {}

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Clear, then record for the duration of the block (and not after it)."""
        self.clear()
        self.enabled = True
        try:
            yield
        finally:
            self.enabled = False

    def call_counts(self) -> dict[str, int]:
        return {p: len(v) for p, v in self._outputs.items()}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def raw(self, path: str) -> list[Any]:
        return self._outputs.get(path, [])

    def levels(self, spec_text: str) -> "OrderedDict[str, Tensor]":
        """``{label: tensor}`` for one spec, one entry per selected key and call, in call order."""
        spec = self.specs[parse_spec(spec_text).text]
        calls = self._outputs.get(spec.path)
        where = f"module {spec.path or '(model)'!r}"
        if not calls:
            raise RuntimeError(f"{where} did not run during the forward pass, so {spec.text!r} captured nothing")
        if spec.call is not None:
            try:
                chosen = [(spec.call, calls[spec.call])]
            except IndexError:
                raise UnknownNameError(
                    f"{where} ran {len(calls)} time(s); call index [{spec.call}] does not exist"
                ) from None
            multi = True
        else:
            chosen = list(enumerate(calls))
            multi = len(calls) > 1
        result: "OrderedDict[str, Tensor]" = OrderedDict()
        for i, out in chosen:
            for suffix, t in _select(out, spec.key, where).items():
                label = f"{spec.path}{suffix}" + (f"[{i}]" if multi else "")
                result[label] = t
        return result
