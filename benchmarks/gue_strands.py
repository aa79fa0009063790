"""Test metrics of a fine-tuned classifier on the forward strand, the reverse strand and both (averaged).

    python benchmarks/gue_strands.py MODEL_DIR TEST_CSV

MODEL_DIR is ``out/model`` of ``dnalm finetune``; TEST_CSV has ``sequence,label`` columns (GUE layout).
"Both" is what ``data.rc_eval=true`` reports: the mean of the two strands' class log-probabilities.
MCC and AUROC (of the log-probability margin) come from scikit-learn.
"""

from __future__ import annotations

import sys

import pandas as pd
import torch
from sklearn.metrics import matthews_corrcoef, roc_auc_score

from dnalm.data.datasets import LabeledCollator
from dnalm.models.heads import load_classifier
from dnalm.tokenizers import load_tokenizer, reverse_complement


def log_probs(model, tokenizer, sequences: list[str], batch: int = 256) -> torch.Tensor:
    collate, out = LabeledCollator(), []
    for i in range(0, len(sequences), batch):
        b = collate([{"input_ids": torch.as_tensor(tokenizer.encode(s)), "labels": torch.tensor(0)}
                     for s in sequences[i:i + batch]])
        with torch.inference_mode():
            out.append(model(b["input_ids"], b["attention_mask"]).float().log_softmax(-1))
    return torch.cat(out)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    model, tokenizer = load_classifier(argv[0]).eval(), load_tokenizer(argv[0])
    df = pd.read_csv(argv[1])
    y, seqs = df["label"].to_numpy(), [str(s) for s in df["sequence"]]
    fwd = log_probs(model, tokenizer, seqs)
    rev = log_probs(model, tokenizer, [reverse_complement(s) for s in seqs])
    print("| strand | test MCC | test AUROC |\n|---|---|---|")
    for name, lp in (("forward", fwd), ("reverse", rev), ("both (mean log-probability)", (fwd + rev) / 2)):
        mcc = matthews_corrcoef(y, lp.argmax(1).numpy())
        auc = roc_auc_score(y, (lp[:, 1] - lp[:, 0]).numpy()) if lp.shape[1] == 2 else float("nan")
        print(f"| {name} | {mcc:.4f} | {auc:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
