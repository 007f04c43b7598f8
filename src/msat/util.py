"""Small helpers that every part of the package uses: the input tensors of a data iterable, a progress
bar, the device and dtype of a module, and the registries of named classes."""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import nn


def device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def dtype_of(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def batches(data: Iterable, num_batches: Optional[int]):
    """The input tensors of at most ``num_batches`` items of ``data`` (tensors or (x, y) pairs)."""
    for i, item in enumerate(data):
        if num_batches is not None and i >= num_batches:
            return
        if isinstance(item, (tuple, list)):
            item = item[0]
        if not isinstance(item, torch.Tensor):
            raise TypeError(f"calibration data must yield tensors or (input, target) pairs, got {type(item)}")
        yield item


def progress_bar(it, total, desc: str, enabled: bool):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, leave=False, disable=None)


def registrar(table: dict, what: str, doc: Optional[str] = None) -> Callable[[str], Callable[[type], type]]:
    """``register(name)``, a class decorator that files a class in ``table`` under ``name`` and sets
    its ``name`` attribute (``doc``: its docstring): the registries of threshold rules, balancings,
    corrections and exit rules."""

    def register(name: str):
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {what} is registered under a non-empty name, got {name!r}")

        def deco(cls):
            cls.name = name
            table[name] = cls
            return cls

        return deco

    register.__doc__ = doc or f"Class decorator: make a {what} available under ``name``."
    return register
