"""Explicit inference state for prefill and step-by-step decoding.

An :class:`InferenceState` is passed to a model's ``forward(input_ids, state=state)``. It holds
``offset`` (the number of tokens of each sequence already processed) and one state object per
layer (``layers[i]`` belongs to the mixer of block ``i``). A forward with a state continues the
sequences at position ``offset``: the first call is the prefill, later calls feed one token (a
step) or a chunk; afterwards ``offset`` has advanced by the number of tokens fed.

Every sequence mixer of :mod:`dnalm.models` allocates, fills and steps its own state; the contract
(``allocate_state``, ``forward(x, state, offset)``, ``step``) is :mod:`dnalm.models.mixer`'s.

The state object does not know the model; build it with the model's ``allocate_state`` (which
calls :meth:`InferenceState.allocate` with its mixers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from dnalm.errors import ConfigError
from dnalm.models.mixer import Mixer


class StepNotSupportedError(ConfigError):
    """The model's mixer has no recurrent form, so it cannot prefill or decode step by step."""


@dataclass
class InferenceState:
    """Tokens already processed (``offset``) and one state per layer.

    batch_size: number of sequences B; max_len: capacity in tokens; layers[i]: the state of
    layer i's mixer (its own type).
    """

    batch_size: int
    max_len: int
    layers: list[Any] = field(default_factory=list)
    offset: int = 0

    @classmethod
    def allocate(cls, mixers: Sequence[Mixer], batch: int, max_len: int, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> InferenceState:
        """A fresh state (offset 0) with ``mixer.allocate_state(batch, max_len, device, dtype)`` per layer."""
        if batch < 1 or max_len < 1:
            raise ConfigError(f"inference state needs batch >= 1 and max_len >= 1, got {batch} and {max_len}")
        layers = []
        for i, mixer in enumerate(mixers):
            if not hasattr(mixer, "allocate_state"):
                raise StepNotSupportedError(
                    f"layer {i} mixer {type(mixer).__name__} has no recurrent state; "
                    "it cannot decode step by step")
            layers.append(mixer.allocate_state(batch, max_len, device, dtype))
        return cls(batch_size=batch, max_len=max_len, layers=layers)

    @property
    def remaining(self) -> int:
        """How many more tokens fit."""
        return self.max_len - self.offset

    def check_room(self, n: int, batch: int | None = None) -> None:
        """Raise ConfigError unless ``n`` more tokens (and ``batch`` rows, when given) fit this state."""
        if batch is not None and batch != self.batch_size:
            raise ConfigError(f"inference state holds {self.batch_size} sequences, got a batch of {batch}")
        if self.offset + n > self.max_len:
            raise ConfigError(f"inference state is full: {self.offset} + {n} tokens "
                              f"exceed max_len {self.max_len}")

    def advance(self, n: int) -> None:
        """Move ``offset`` on by ``n`` tokens (called by the model after a forward with this state)."""
        self.check_room(n)
        self.offset += n

    def map_tensors(self, fn: Callable[[Tensor], Tensor]) -> InferenceState:
        """A new state with ``fn`` applied to every tensor of every layer (same offset)."""
        return InferenceState(self.batch_size, self.max_len, [_map(s, fn) for s in self.layers], self.offset)

    def select(self, index: Tensor) -> InferenceState:
        """Keep (or reorder/repeat) sequences ``index`` (1-D long tensor) of every layer state.

        Layer states must hold their tensors with the batch as dimension 0, except dataclass
        fields declared with ``init=False`` (caches shared by all rows), which are kept as they are.
        """
        out = self.map_tensors(lambda t: t.index_select(0, index.to(t.device)))
        out.batch_size = int(index.numel())
        return out


def _map(obj: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(obj, Tensor):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = dataclasses.fields(obj)
        new = dataclasses.replace(obj, **{f.name: _map(getattr(obj, f.name), fn) for f in fields if f.init})
        for f in fields:
            if not f.init:
                setattr(new, f.name, getattr(obj, f.name))
        return new
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(v, fn) for v in obj)
    return obj
