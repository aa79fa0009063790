"""``dnalm generate checkpoint=CKPT prompts=[...] out=samples.fasta``: sampled continuations (FASTA + JSONL)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from omegaconf import DictConfig

from dnalm.config import to_dataclass
from dnalm.errors import ConfigError


@dataclass
class GenerateConfig:
    checkpoint: str | None = None
    prompts: list[str] = field(default_factory=list)
    input: str | None = None
    out: str | None = None
    jsonl: str | None = None
    max_new_tokens: int = 100
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    n_samples: int = 1
    seed: int = 0
    acgt_only: bool = True
    prepend_bos: bool = False
    include_prompt: bool = False
    uppercase: bool = True
    batch_size: int = 16
    decode: str = "auto"
    device: str = "auto"
    dtype: str = "fp32"


def main(cfg: DictConfig) -> int | None:
    gc = to_dataclass(cfg, GenerateConfig, where="generate")
    if not gc.checkpoint or not gc.out:
        raise ConfigError("generate: set checkpoint=CKPT, out=FILE.fasta and prompts=[...] or input=FASTA")
    if bool(gc.prompts) == bool(gc.input):
        raise ConfigError("generate: give prompts either on the command line (prompts=[ACGT,...]) or in a file "
                          "(input=FASTA), not both or neither")
    from dnalm.inference.api import load_model
    from dnalm.inference.generate import GenerationOptions, check_acgt_tokenizer, generate, prompt_ids
    from dnalm.inference.io import NamedSequence, read_sequences, write_fasta, write_jsonl

    options = GenerationOptions(max_new_tokens=gc.max_new_tokens, temperature=gc.temperature, top_k=gc.top_k,
                                top_p=gc.top_p, n_samples=gc.n_samples, seed=gc.seed, acgt_only=gc.acgt_only,
                                batch_size=gc.batch_size, decode=gc.decode)
    if gc.input:
        prompts = read_sequences(gc.input, uppercase=gc.uppercase)
    else:
        prompts = [NamedSequence(f"prompt{i}", p.upper() if gc.uppercase else p, f"prompts[{i}]")
                   for i, p in enumerate(str(p) for p in gc.prompts)]
    from dnalm.inference.masked import check_objective
    from dnalm.models.family import CAUSAL

    model, tokenizer = load_model(gc.checkpoint, gc.device, gc.dtype)
    check_objective(model, CAUSAL, "generate")
    options = replace(options, acgt=check_acgt_tokenizer(tokenizer, gc.acgt_only))
    rows = [prompt_ids(tokenizer, p.seq, gc.prepend_bos, where=p.where) for p in prompts]
    results = generate(model, rows, options, progress=True)
    records, lines = [], []
    for g in results:
        p = prompts[g.prompt_index]
        completion = tokenizer.decode(g.token_ids)
        name = f"{p.id}_sample{g.sample}"
        mean = float(g.log_probs.mean())
        records.append((f"{name} prompt={p.id} new_bases={len(completion)} mean_log_prob={mean:.4f}",
                        (p.seq + completion) if gc.include_prompt else completion))
        lines.append({"id": name, "prompt_id": p.id, "sample": g.sample, "prompt": p.seq, "completion": completion,
                      "log_probs": [round(float(x), 6) for x in g.log_probs], "mean_log_prob": mean,
                      "log_prob_distribution": "unmodified model (no temperature, top-k, top-p or ACGT restriction)",
                      "temperature": gc.temperature, "top_k": gc.top_k, "top_p": gc.top_p, "seed": gc.seed,
                      "prepend_bos": gc.prepend_bos})
    output = Path(gc.out)
    jsonl = Path(gc.jsonl) if gc.jsonl else output.with_suffix(".jsonl")
    write_jsonl(jsonl, lines)
    write_fasta(output, records)
    print(f"generate: {len(results)} samples of {gc.max_new_tokens} bases from {len(prompts)} prompts -> "
          f"{output}, {jsonl}")
    return 0
