"""InferenceState bookkeeping, and batch selection on a real Hyena state."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch import Tensor

from dnalm.errors import ConfigError
from dnalm.inference.state import InferenceState, StepNotSupportedError
from dnalm.models.hyena import HyenaConfig, HyenaLM


@dataclass
class _Cache:
    rows: Tensor  # (B, 2)
    shared: Tensor | None = field(default=None, init=False)  # (5,), not per row


class _Recorder:
    def __init__(self):
        self.calls = []

    def allocate_state(self, batch, max_len, device=None, dtype=None):
        self.calls.append((batch, max_len, device, dtype))
        cache = _Cache(torch.arange(2 * batch, dtype=torch.float32).reshape(batch, 2))
        cache.shared = torch.arange(5.0)
        return {"cache": cache, "steps": [torch.arange(batch)], "name": "x"}


def test_allocate_calls_every_mixer():
    mixers = [_Recorder(), _Recorder()]
    state = InferenceState.allocate(mixers, 3, 10, torch.device("cpu"), torch.float64)
    assert [m.calls for m in mixers] == [[(3, 10, torch.device("cpu"), torch.float64)]] * 2
    assert (state.offset, state.batch_size, state.max_len, state.remaining) == (0, 3, 10, 10)
    assert len(state.layers) == 2
    with pytest.raises(StepNotSupportedError, match="layer 0 mixer object"):
        InferenceState.allocate([object()], 1, 4)
    with pytest.raises(ConfigError, match="max_len >= 1"):
        InferenceState.allocate(mixers, 1, 0)


def test_advance_and_room():
    state = InferenceState.allocate([_Recorder()], 2, 5)
    state.advance(3)
    state.check_room(2, batch=2)
    assert state.remaining == 2
    with pytest.raises(ConfigError, match="3 \\+ 3 tokens exceed max_len 5"):
        state.advance(3)
    with pytest.raises(ConfigError, match="holds 2 sequences, got a batch of 4"):
        state.check_room(1, batch=4)
    assert state.offset == 3


def test_select_reorders_rows_and_keeps_shared_caches():
    state = InferenceState.allocate([_Recorder()], 3, 5)
    state.advance(2)
    picked = state.select(torch.tensor([2, 0, 2]))
    layer = picked.layers[0]
    assert picked.batch_size == 3 and picked.offset == 2
    assert layer["cache"].rows.tolist() == [[4.0, 5.0], [0.0, 1.0], [4.0, 5.0]]
    assert layer["steps"][0].tolist() == [2, 0, 2]
    assert layer["cache"].shared is state.layers[0]["cache"].shared and layer["name"] == "x"
    assert state.layers[0]["cache"].rows.shape == (3, 2)  # the original is unchanged


def test_select_on_a_hyena_state_continues_the_chosen_sequences():
    torch.manual_seed(0)
    model = HyenaLM(HyenaConfig(d_model=16, n_layer=2, d_inner=32, filter_order=8, l_max=40)).eval()
    ids = torch.randint(0, 12, (3, 20), generator=torch.Generator().manual_seed(1))
    index = torch.tensor([2, 0])
    with torch.no_grad():
        full = model(ids[index])
        state = model.allocate_state(3, 20)
        head = model(ids[:, :9], state)[index]
        state = state.select(index)
        tail = [model(ids[index, i:i + 1], state) for i in range(9, 20)]
    torch.testing.assert_close(torch.cat([head, *tail], 1), full, atol=1e-5, rtol=1e-5)
