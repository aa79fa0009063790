"""Decoding steps at a tensor offset (the CPU twin of the CUDA-graph step) against the reference steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dnalm.errors import ConfigError
from dnalm.inference.decode import Stepper, static_step_supported, step_logits_at
from dnalm.inference.generate import GenerationOptions, generate
from dnalm.models import hyena
from dnalm.models.hyena import HyenaConfig, HyenaLM
from dnalm.models.transformer import TransformerConfig, TransformerLM

TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def model() -> HyenaLM:
    torch.manual_seed(0)
    return HyenaLM(HyenaConfig(d_model=24, n_layer=2, d_inner=48, filter_order=16, l_max=202)).eval()


@pytest.mark.parametrize("prompt, capacity", [(1, 40), (9, 9 + 31), (150, 200)])
def test_operator_step_at_a_tensor_offset_equals_the_reference_step(model, prompt, capacity):
    """Random inputs; the state holds more positions than are used (the unused ones must not count)."""
    op = model.mixers[0]
    g = torch.Generator().manual_seed(prompt)
    D = op.d_model
    u = torch.randn(3, capacity, D, generator=g)
    ref_state, new_state = (op.allocate_state(3, capacity) for _ in range(2))
    with torch.no_grad():
        op(u[:, :prompt], ref_state, 0)
        op(u[:, :prompt], new_state, 0)
        for t in range(prompt, capacity):
            ref = op.step(u[:, t:t + 1], ref_state, t)
            new = op.step(u[:, t:t + 1], new_state, torch.tensor([t]))
            torch.testing.assert_close(new, ref, **TOL)
    torch.testing.assert_close(new_state.z, ref_state.z, **TOL)
    torch.testing.assert_close(new_state.conv, ref_state.conv, **TOL)


@pytest.mark.parametrize("tensor_offset, one_row_at_a_time", [(False, False), (True, False), (False, True)])
def test_steps_after_a_prompt_use_its_precomputed_contribution(model, tensor_offset, one_row_at_a_time,
                                                               monkeypatch):
    """After a forward with a state, a step adds the prompt's contribution computed once by FFT
    (``HyenaState.pre``) to a sum over the positions written since; a second forward chunk recomputes
    it. Outputs equal the stateless forward over the whole input (random inputs), also when the state's
    FFT runs one row at a time (the memory bound of long prompts at large batches)."""
    if one_row_at_a_time:
        monkeypatch.setattr(hyena, "STATE_FFT_ELEMENTS", 1)
    op = model.mixers[1]
    u = torch.randn(2, 120, op.d_model, generator=torch.Generator().manual_seed(5))

    def at(t: int):
        return torch.tensor([t]) if tensor_offset else t

    with torch.no_grad():
        full = op(u)
        state = op.allocate_state(2, 120)
        outs = [op(u[:, :30], state, 0)]
        assert state.prefix == 30 and state.pre.shape == (2, op.d_model, 90)
        outs += [op.step(u[:, t:t + 1], state, at(t)) for t in range(30, 70)]
        outs.append(op(u[:, 70:100], state, 70))
        assert state.prefix == 100 and state.pre.shape == (2, op.d_model, 20)
        outs += [op.step(u[:, t:t + 1], state, at(t)) for t in range(100, 120)]
    torch.testing.assert_close(torch.cat(outs, 1), full, **TOL)


def test_model_step_at_offset_equals_full_forward(model):
    """The step at position t consumes token t: its logits are the full forward's at t."""
    ids = torch.randint(0, 12, (2, 60), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)[:, 20:60]
        state = model.allocate_state(2, 80)
        model(ids[:, :20], state)
        outs = []
        for t in range(20, 60):
            outs.append(step_logits_at(model, ids[:, t:t + 1], state, torch.tensor([state.offset])))
            state.advance(1)
    torch.testing.assert_close(torch.stack(outs, 1), full, **TOL)


@pytest.mark.parametrize("mode", ["eager", "static", "compiled"])
def test_stepper_modes_advance_the_state_like_the_model(model, mode):
    ids = torch.randint(7, 11, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        state = model.allocate_state(2, 30)
        model(ids[:, :10], state)
        step = Stepper(model, state, mode)
        outs = [step(ids[:, t:t + 1]) for t in range(10, 30)]
        full = model(ids)[:, 10:30]
    assert state.offset == 30 and step.mode == mode
    torch.testing.assert_close(torch.stack(outs, 1), full, **TOL)
    with pytest.raises(ConfigError, match="inference state is full"):
        step(ids[:, :1])


@pytest.mark.parametrize("mode", ["eager", "static", "compiled"])
def test_a_stepper_that_picks_its_input_equals_stepping_with_the_picked_ids(model, mode):
    """``pick`` (greedy here, recording each pick at its offset) chooses every step's input from the previous
    logits on the device; the same tokens fed by hand to a plain eager stepper give the same logits."""
    prompt = torch.randint(7, 11, (2, 9), generator=torch.Generator().manual_seed(4))
    picked = torch.full((2, 30), -1)

    def pick(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        nxt = logits[:, 7:11].argmax(-1) + 7
        picked.index_copy_(1, pos, nxt[:, None])
        return nxt[:, None]

    with torch.no_grad():
        runs = []
        for m, p in ((mode, pick), ("eager", None)):
            state = model.allocate_state(2, 30)
            logits = model(prompt, state)[:, -1]
            step, outs = Stepper(model, state, m, pick=p), []
            for t in range(9, 30):
                logits = step(logits if p else picked[:, t:t + 1].clone())
                outs.append(logits)
            runs.append(torch.stack(outs, 1))
    assert (picked[:, 9:] >= 7).all() and (picked[:, :9] == -1).all()
    torch.testing.assert_close(runs[0], runs[1], **TOL)


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.0}, {"top_p": 0.8, "top_k": 3, "temperature": 0.7}])
def test_generation_is_the_same_in_every_cpu_mode(model, sampling):
    """eager: host-side sampling per step (the reference); static: sampling on the device from uniform numbers
    drawn beforehand (the loop of the graph modes): the same tokens and log-probs."""
    prompts = [np.array([7, 8, 9, 10, 7, 7]), np.array([9, 9, 10])]
    runs = {mode: generate(model, prompts, GenerationOptions(max_new_tokens=25, n_samples=2, seed=3, decode=mode,
                                                             **sampling))
            for mode in ("auto", "eager", "static")}
    for mode in ("eager", "static"):
        for a, b in zip(runs["auto"], runs[mode]):
            assert np.array_equal(a.token_ids, b.token_ids)
            np.testing.assert_allclose(a.log_probs, b.log_probs, atol=1e-5)


def test_modes_that_cannot_run_are_clear_errors(model):
    tiny = TransformerLM(TransformerConfig(d_model=16, n_layer=1, n_head=2, d_inner=32, max_len=16)).eval()
    assert static_step_supported(model) and not static_step_supported(tiny)
    state = tiny.allocate_state(1, 16)
    assert Stepper(tiny, state, "auto").mode == "eager"  # no CUDA here, and attention has no static step
    with pytest.raises(ConfigError, match="every mixer is a Hyena operator"):
        Stepper(tiny, state, "static")
    with pytest.raises(ConfigError, match="needs the model on a CUDA device"):
        Stepper(model, model.allocate_state(1, 8), "graph")
    with pytest.raises(ConfigError, match="decoding mode must be one of"):
        Stepper(model, model.allocate_state(1, 8), "fast")
    with pytest.raises(ConfigError, match="decode must be one of"):
        GenerationOptions(decode="fast")
