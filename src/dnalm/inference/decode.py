"""Single-token decoding steps: eager, at a tensor offset, or replayed as a CUDA graph.

A decoding step of a small model at batch 1 is a few hundred tiny kernels; launched one by one from
Python they cost far more than their arithmetic. For models whose every mixer is a Hyena operator the
step can run at an offset held in a device tensor (:meth:`dnalm.models.hyena.HyenaOperator.step`):
its shapes then do not depend on the position, so on CUDA it is captured once as a graph and replayed
for every new token.

Modes of :class:`Stepper` (``mode``):

``eager``
    ``model(ids, state=state)`` at the state's integer offset (the reference; every model family).
``static``
    the same step at a tensor offset without a graph: the CPU twin of ``graph``, compared with
    ``eager`` in the tests.
``graph``
    ``static`` captured as a CUDA graph (CUDA only). The first step is also run eagerly and the replay
    must agree with it; if capture fails or they disagree, decoding goes on eagerly with a warning.
``compiled``
    ``static`` compiled with ``torch.compile`` (Inductor fuses the step's few hundred small kernels into
    fewer), captured as a CUDA graph on CUDA; on the CPU the compiled step runs without a graph (the
    twin the tests compare). The step's shapes depend on the batch, the state's size (prompt + new tokens)
    and the prompt's length, so each new combination compiles once (about 10 s on an H100 for
    HyenaDNA-large): for long generations or many batches of one shape.
``auto``
    ``graph`` for Hyena models on CUDA, else ``eager``.

Picking the input on the device (``pick``): a stepper made with ``pick(logits (B, V), offset (1,)) -> ids
(B, 1)`` takes the previous step's logits instead of ids and chooses each step's input from them itself
(sampling from uniform numbers drawn beforehand, :mod:`dnalm.inference.generate`). In ``graph`` and
``compiled`` modes the choice is captured in the same graph as the step, so a token costs one graph
replay and no kernel launched from Python; the other modes call ``pick`` then the step.

All modes give the same logits up to float rounding (the tensor-offset step sums over the whole state
after the prompt, the positions not written yet being zeros, in another order).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dnalm.errors import ConfigError
from dnalm.inference.state import InferenceState
from dnalm.models.blocks import CausalLM

MODES = ("auto", "eager", "static", "graph", "compiled")
_COMPILED = None


def compiled_step():
    """:func:`step_logits_at` through ``torch.compile`` (one compiled function per process, static shapes)."""
    global _COMPILED
    if _COMPILED is None:
        import torch._dynamo.config as dynamo_config

        # every prompt length and batch size is compiled once; past the default limit of 8 variants
        # the step would silently run uncompiled
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
        _COMPILED = torch.compile(step_logits_at, dynamic=False)
    return _COMPILED


def static_step_supported(model: CausalLM) -> bool:
    """Whether every mixer of ``model`` steps at a tensor offset (Hyena operators do)."""
    from dnalm.models.hyena import HyenaOperator

    return len(model.mixers) > 0 and all(isinstance(m, HyenaOperator) for m in model.mixers)


def resolve_mode(model: CausalLM, mode: str) -> str:
    """The mode a :class:`Stepper` runs for ``mode``: ``auto`` is ``graph`` for Hyena models on CUDA, else ``eager``."""
    if mode != "auto":
        return mode
    cuda = model.lm_head.weight.device.type == "cuda"
    return "graph" if cuda and static_step_supported(model) else "eager"


def step_logits_at(model: CausalLM, ids: Tensor, state: InferenceState, offset: Tensor) -> Tensor:
    """Logits (B, V) of one token per row, ids (B, 1), at position ``offset`` (int64 tensor (1,)); the
    layers' states are updated but ``state.offset`` is not advanced (the caller does that)."""
    bb = model.backbone
    x = bb.drop_emb(bb.embeddings(ids))
    if bb.residual_in_fp32:
        x = x.float()
    for block, layer_state in zip(bb.layers, state.layers):
        x = block.step(x, layer_state, offset)
    h = bb.ln_f(x.to(bb.ln_f.weight.dtype))
    return model.lm_head(h)[:, -1]


class Stepper:
    """``stepper(ids (B, 1)) -> logits (B, V)``: one decoding step on ``state`` (after its prefill),
    advancing ``state.offset`` by one. With ``pick``: ``stepper(logits (B, V)) -> logits (B, V)``, the step's
    ids being ``pick(logits, offset)``. See the module docstring for ``mode`` and ``pick``."""

    def __init__(self, model: CausalLM, state: InferenceState, mode: str = "auto",
                 pick: Callable[[Tensor, Tensor], Tensor] | None = None):
        if mode not in MODES:
            raise ConfigError(f"decoding mode must be one of {', '.join(MODES)}, got {mode!r}")
        device = model.lm_head.weight.device
        mode = resolve_mode(model, mode)
        if mode in ("static", "graph", "compiled") and not static_step_supported(model):
            raise ConfigError(f"decoding mode '{mode}' needs a model whose every mixer is a Hyena operator")
        if mode == "graph" and device.type != "cuda":
            raise ConfigError("decoding mode 'graph' needs the model on a CUDA device")
        if mode != "eager" and model.training:
            raise ConfigError(f"decoding mode '{mode}' needs the model in eval mode")
        self.model, self.state, self.mode, self.pick = model, state, mode, pick
        self.fn = compiled_step() if mode == "compiled" else step_logits_at
        self.use_graph = mode == "graph" or (mode == "compiled" and device.type == "cuda")
        self.offset = torch.zeros(1, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.x: Tensor | None = None  # the graph's input: ids, or the logits that pick reads
        self.out: Tensor | None = None

    def _ids(self, x: Tensor) -> Tensor:
        return x if self.pick is None else self.pick(x, self.offset)

    def _body(self, x: Tensor) -> Tensor:
        """The static step on input x (what a graph captures)."""
        return self.fn(self.model, self._ids(x), self.state, self.offset)

    def __call__(self, x: Tensor) -> Tensor:
        state = self.state
        self.offset.fill_(state.offset)
        if self.mode == "eager":
            return self.model(self._ids(x), state=state)[:, -1]
        state.check_room(1, x.shape[0])
        if not self.use_graph:
            logits = self._body(x)
        elif self.graph is None:
            logits = self._capture(x)
            if logits is None:  # the graph could not be used: this step and the next ones run eagerly
                return self.model(self._ids(x), state=state)[:, -1]
        else:
            self.x.copy_(x)
            self.graph.replay()
            logits = self.out.clone()
        state.advance(1)
        return logits

    def _capture(self, x: Tensor) -> Tensor | None:
        """Capture the step as a CUDA graph and return the first step's logits, checked against the same
        step run eagerly; None (with a warning, the state as before the step and ``mode`` eager) when
        capture fails or the replay disagrees.

        The eager run goes first, on a side stream: it also allocates what the step keeps (the padded
        filter, cuBLAS workspaces). The short-convolution states it shifted are restored before the
        replay; the input it wrote into the long-convolution state is written again, identically (and so
        is what ``pick`` records: it reads the same logits at the same offset)."""
        import warnings

        state = self.state
        self.x = x.clone()
        before = [layer.conv.clone() for layer in state.layers]

        def restore() -> None:
            for layer, conv in zip(state.layers, before):
                layer.conv.copy_(conv)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            expected = step_logits_at(self.model, self._ids(self.x), state, self.offset).clone()
        torch.cuda.current_stream().wait_stream(side)
        restore()
        try:
            if self.fn is not step_logits_at:  # compile (and warm up) outside the capture
                with torch.cuda.stream(side):
                    self._body(self.x)
                torch.cuda.current_stream().wait_stream(side)
                restore()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self._body(self.x)
            self.graph.replay()
            logits = self.out.clone()
            problem = None if torch.allclose(logits, expected, rtol=1e-3, atol=1e-3) else \
                f"its logits differ from the eager step by {(logits - expected).abs().max().item():.3g}"
        except Exception as exc:  # a failed capture or compilation (Inductor raises its own errors)
            problem = f"capture failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        if problem is None:
            return logits
        warnings.warn(f"CUDA-graph decoding disabled ({problem}); decoding eagerly", RuntimeWarning, stacklevel=3)
        self.graph, self.out, self.mode, self.use_graph = None, None, "eager", False
        restore()
        return None
