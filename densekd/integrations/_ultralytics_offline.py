"""Keep Ultralytics off the network while densekd trains with it.

Every path by which Ultralytics 8.4 reaches the internet during a training run, and what we do about it:

============================================  =================================================================
where (module: function)                      what it would fetch / send → our guard
============================================  =================================================================
``utils``: ``ONLINE = is_online()`` at import  DNS look-ups of two public hosts → ``YOLO_OFFLINE=1`` (set before
                                              the first import unless the user set it), which also turns off the
                                              anonymous usage events (``utils.events``), Sentry and the pip
                                              update check, all gated on ``ONLINE``.
``data.utils``: ``check_det_dataset``          ``check_font("Arial.ttf")`` on every dataset check: a HEAD request
                                              and a download into the user config dir → ``check_font`` replaced,
                                              during our runs, by a local-only look-up (``None`` when absent).
``utils.plotting``: ``Annotator``              the same ``check_font`` for plots → same guard; with no local
                                              Arial, PIL's built-in font is used (Ultralytics' own fallback).
``engine.trainer``: ``check_amp``              downloads ``yolo26n.pt`` to compare fp32 and AMP predictions on CUDA
                                              → replaced by a check that downloads nothing (AMP on on CUDA,
                                              off on CPU/MPS, as Ultralytics decides without the comparison).
``nn.tasks``: ``torch_safe_load``             ``attempt_download_asset`` for a weight file name that is not on
                                              disk → densekd checks every weight path exists first, and the
                                              function is replaced by one that only resolves local files.
``data.utils``: ``check_det_dataset``          runs a data YAML's ``download:`` when its images are missing →
                                              densekd checks the image folders exist first.
``utils.callbacks.platform`` / ``events``     the Ultralytics Platform (with an API key) and usage events →
                                              removed from our trainers' callbacks.
============================================  =================================================================

:func:`offline` is a context manager that installs the replacements and restores the originals on exit, so
other Ultralytics use in the same process is untouched. Tests run a whole distillation with every socket
connection and ``urllib`` request refused and check no file appears in Ultralytics' asset folders.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("YOLO_OFFLINE", "1")  # before the first `import ultralytics` (its ONLINE probe)

#: callback modules that talk to Ultralytics' servers; our trainers never run them
NETWORK_CALLBACK_MODULES = ("ultralytics.utils.callbacks.platform", "ultralytics.utils.callbacks.hub",
                            "ultralytics.utils.events")


def local_font(font: str = "Arial.ttf") -> Path | None:
    """``check_font`` without the download: the user config dir, then matplotlib's font list, else ``None``."""
    from matplotlib import font_manager
    from ultralytics.utils import USER_CONFIG_DIR

    name = Path(font).name
    f = USER_CONFIG_DIR / name
    if f.exists():
        return f
    for entry in font_manager.fontManager.ttflist:
        if font in entry.fname and os.path.exists(entry.fname):
            return Path(entry.fname)
    return None


def amp_without_download(model: Any) -> bool:
    """Ultralytics' AMP decision without its fp32-vs-AMP comparison on downloaded weights."""
    import torch

    device = next(model.parameters()).device
    return device.type not in {"cpu", "mps"} and torch.cuda.is_available()


def local_asset(file: Any, *args: Any, **kwargs: Any) -> str:
    """``attempt_download_asset`` that never downloads: a file on disk or in the weights dir, else one error."""
    from ultralytics.utils import SETTINGS

    p = Path(str(file).strip().replace("'", ""))
    if p.exists():
        return str(p)
    if (Path(SETTINGS["weights_dir"]) / p).exists():
        return str(Path(SETTINGS["weights_dir"]) / p)
    raise FileNotFoundError(f"weights '{file}' are not on disk and densekd does not download: pass a local file")


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Install the offline replacements listed in the module docstring for the duration of the block."""
    import ultralytics.data.utils as data_utils
    import ultralytics.engine.trainer as trainer_mod
    import ultralytics.utils.downloads as downloads
    import ultralytics.utils.plotting as plotting

    patches = [(data_utils, "check_font", local_font), (plotting, "check_font", local_font),
               (trainer_mod, "check_amp", amp_without_download), (downloads, "attempt_download_asset", local_asset)]
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    for mod, name, new in patches:
        setattr(mod, name, new)
    try:
        yield
    finally:
        for mod, name, old in saved:
            setattr(mod, name, old)


def drop_network_callbacks(callbacks: dict[str, list[Any]]) -> None:
    """Remove, in place, every callback defined in a module of :data:`NETWORK_CALLBACK_MODULES`."""
    for event, fns in callbacks.items():
        callbacks[event] = [f for f in fns if getattr(f, "__module__", "") not in NETWORK_CALLBACK_MODULES]
