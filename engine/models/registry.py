"""A lazy, per-process model cache: the first `get` loads under a lock, later calls reuse.

Models are loaded in the process that uses them, never before a fork: CUDA state does not survive
`fork()`, and Celery kills a prefork child whose `worker_process_init` takes over 4 s. A prefork
parent calls `forbid_loading(...)`; its children may load (lazily, on their first job).
Importing this module is cheap: torch is imported only inside `resolve_device`.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from functools import partial
from typing import TYPE_CHECKING, Callable, TypeVar

from engine.errors import ModelUnavailable

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
_MISSING = object()
_current_pid = os.getpid  # a module-level name, so tests can fake a fork


class ModelRegistry:
    """Per-process cache of loaded models, keyed by a string such as ``"clip:ViT-B-32:openai@cpu"``."""

    def __init__(self) -> None:
        self._reset()
        # A forked child gets fresh locks at once (a parent thread may have held one mid-fork);
        # the pid check in `get` is the fallback that also drops the parent's models.
        os.register_at_fork(after_in_child=partial(_reset_after_fork, weakref.ref(self)))

    def get(self, key: str, loader: Callable[[], T]) -> T:
        """Return the model cached under `key`, calling `loader()` once per process to create it.

        Threads asking for the same key wait for one load; different keys load in parallel.
        A loader that raises caches nothing, so the next call tries again.
        """
        if self._pid != _current_pid():
            self._reset()  # forked after loading: the parent's tensors are not ours to use
        self._check_allowed(key)
        model = self._models.get(key, _MISSING)
        if model is not _MISSING:
            return model
        with self._key_lock(key):
            model = self._models.get(key, _MISSING)
            if model is _MISSING:
                began = time.perf_counter()
                model = loader()
                _note_load(key, time.perf_counter() - began)
                self._models[key] = model
        return model

    def loaded(self) -> list[str]:
        """Keys of the models loaded in this process."""
        return sorted(self._models)

    def clear(self) -> None:
        """Drop every cached model (the next `get` loads again)."""
        with self._lock:
            self._models = {}

    def forbid_loading(self, reason: str) -> None:
        """Make `get` raise RuntimeError(reason) in this process, e.g. a Celery prefork parent.
        Its forked children are not affected: that is where models belong."""
        self._forbidden = (_current_pid(), reason)

    def allow_loading(self) -> None:
        """Undo `forbid_loading`."""
        self._forbidden = None

    def _check_allowed(self, key: str) -> None:
        forbidden = self._forbidden
        if forbidden is not None and forbidden[0] == _current_pid():
            raise RuntimeError(f"Refusing to load model {key!r} in this process: {forbidden[1]}")

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def _reset(self) -> None:
        # Replaces (never acquires) the locks: after a fork they may be held by a thread that is gone.
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._models: dict[str, object] = {}
        self._pid = _current_pid()
        forbidden = getattr(self, "_forbidden", None)
        self._forbidden = forbidden if forbidden and forbidden[0] == self._pid else None


def _note_load(key: str, seconds: float) -> None:
    from engine.observe import metrics

    metrics().model_load.labels(key.split(":", 1)[0]).observe(seconds)  # kind: "clip", "vqgan", ...


def _reset_after_fork(ref: weakref.ref) -> None:
    registry_ = ref()
    if registry_ is not None:
        registry_._reset()


registry = ModelRegistry()

# torch's CPU generator is process-wide: seeded builds (CLIP and VQGAN presets) take turns, or a worker
# thread's load and another thread's draw each other's numbers and their weights differ.
SEEDED_BUILD_LOCK = threading.Lock()


def resolve_device(name: "str | torch.device" = "auto") -> "torch.device":
    """Turn a device setting into a `torch.device`: "auto" (cuda if available, else cpu), "cpu",
    "cuda" or "cuda:N". Raises ModelUnavailable when the requested device is not here."""
    import torch

    name = str(name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModelUnavailable(f"Unknown device {name!r}: use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ModelUnavailable(f"Device {name!r} is not supported: use auto, cpu, cuda or cuda:N.")
    if not torch.cuda.is_available():
        raise ModelUnavailable(
            f"Device {name!r} was requested but this machine has no usable CUDA GPU "
            "(or torch was built without CUDA); set the device to cpu or auto."
        )
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ModelUnavailable(
            f"Device {name!r} was requested but only {torch.cuda.device_count()} CUDA device(s) exist."
        )
    return device
