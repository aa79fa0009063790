"""``dnalm classify``: a fine-tuned classifier (or its LoRA adapter) on new sequences, against the model's own
forward pass one sequence at a time; the user's command after ``dnalm finetune``; ``predict`` names the head."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from _inference_helpers import tiny_hyena

from dnalm.cli import main, run
from dnalm.models.heads import SequenceClassifier, save_classifier
from dnalm.tokenizers import CharTokenizer, reverse_complement

SEQS = {"a": "ACGTTGCAACGTAGGA", "b": "TTTTGGGGCCCCAAAA", "c": "acgtnacgtaCGGT", "d": "GATTACA"}


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    torch.manual_seed(3)
    model = SequenceClassifier(tiny_hyena(seed=4), 3, pooling="mean", dropout=0.0)
    with torch.no_grad():
        model.head.weight.mul_(20.0)  # spread the probabilities
    path = tmp_path_factory.mktemp("clf") / "model"
    save_classifier(model, path, tokenizer=CharTokenizer(), classes=["enhancer", "promoter", "other"],
                    extra={"inputs": {"both_strands": False, "max_length": None}})
    return path, model.eval()


def _one(model: SequenceClassifier, seq: str) -> np.ndarray:
    ids = torch.as_tensor(CharTokenizer().encode(seq.upper()))[None]
    with torch.no_grad():
        return model(ids).double().log_softmax(-1)[0].numpy()


def _rows(path) -> list[dict[str, str]]:
    delimiter = "\t" if str(path).endswith(".tsv") else ","
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def test_classify_equals_the_classifier_run_one_sequence_at_a_time(tmp_path, classifier_dir, capsys):
    path, model = classifier_dir
    fasta = tmp_path / "new.fa"
    fasta.write_text("".join(f">{k} some description\n{v}\n" for k, v in SEQS.items()))
    assert run(["classify", f"checkpoint={path}", f"input={fasta}", f"out={tmp_path / 'p.csv'}", "batch_size=3",
                "device=cpu"]) == 0
    assert "classify: 4 sequences (classes enhancer, promoter, other; forward strand)" in capsys.readouterr().out
    rows = _rows(tmp_path / "p.csv")
    assert list(rows[0]) == ["id", "length", "predicted", "p_enhancer", "p_promoter", "p_other"]
    for row, (name, seq) in zip(rows, SEQS.items(), strict=True):
        expected = np.exp(_one(model, seq))
        got = np.array([float(row[f"p_{c}"]) for c in ("enhancer", "promoter", "other")])
        np.testing.assert_allclose(got, expected, atol=2e-6)  # 6 significant digits in the CSV
        assert row["id"] == name and int(row["length"]) == len(seq)
        assert row["predicted"] == ["enhancer", "promoter", "other"][int(np.argmax(expected))]

    # both strands: the mean of the two strands' log-probabilities, renormalised (fine-tuning's rc_eval)
    table = tmp_path / "new.tsv"
    table.write_text("id\tsequence\tlabel\n" + "".join(f"{k}\t{v}\t{'promoter' if k < 'c' else 'other'}\n"
                                                      for k, v in SEQS.items()))
    assert run(["classify", f"checkpoint={path}", f"input={table}", f"out={tmp_path / 'p.tsv'}", "strand=both",
                "device=cpu"]) == 0
    printed = capsys.readouterr().out
    rows = _rows(tmp_path / "p.tsv")
    correct = 0
    for row, seq in zip(rows, SEQS.values(), strict=True):
        mean = 0.5 * (_one(model, seq) + _one(model, reverse_complement(seq.upper())))
        expected = np.exp(mean) / np.exp(mean).sum()
        np.testing.assert_allclose([float(row[f"p_{c}"]) for c in ("enhancer", "promoter", "other")], expected,
                                   atol=2e-6)
        correct += row["predicted"] == row["label"]
    assert "both strands" in printed and f"accuracy {correct / 4:.4f}" in printed


def test_user_command_after_finetune_and_predict_names_the_head(tmp_path, capsys):
    """dnalm finetune ... then dnalm classify checkpoint=<out>/model input=test.csv out=classes.csv: the test metrics
    of finetune's metrics.json come back from the written probabilities; the LoRA adapter classifies alike; and
    dnalm predict on the fine-tuned model says that it gives LM scores and where class probabilities are."""
    from dnalm.models.io import save_pretrained

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for split, n in (("train", 64), ("dev", 16), ("test", 24)):
        lines = ["sequence,label"]
        for i in range(n):
            seq = "".join(rng.choice(list("ACGT"), 30))
            lines.append(f"{seq[:10] + 'GGGGCCCC' + seq[18:] if i % 2 else seq},{['no', 'yes'][i % 2]}")
        (data / f"{split}.csv").write_text("\n".join(lines) + "\n")
    save_pretrained(tiny_hyena(seed=1), tmp_path / "base", tokenizer=CharTokenizer())
    common = [f"checkpoint={tmp_path / 'base'}", f"data.path={data}", "trainer.max_epochs=1", "data.rc_eval=true",
              "trainer.accelerator=cpu", "trainer.progress_bar=false", "data.batch_size=16"]
    assert run(["finetune", *common, f"out={tmp_path / 'ft'}"]) == 0
    assert run(["classify", f"checkpoint={tmp_path / 'ft' / 'model'}", f"input={data / 'test.csv'}",
                f"out={tmp_path / 'classes.csv'}", "device=cpu"]) == 0
    printed = capsys.readouterr().out
    test = json.loads((tmp_path / "ft" / "metrics.json").read_text())["test"]
    assert "both strands" in printed  # as the model was evaluated (data.rc_eval=true)
    assert f"accuracy {test['accuracy']:.4f}, MCC {test['mcc']:.4f}" in printed
    rows = _rows(tmp_path / "classes.csv")
    assert len(rows) == 24 and {r["label"] for r in rows} == {"no", "yes"}
    assert all(abs(float(r["p_no"]) + float(r["p_yes"]) - 1) < 1e-5 for r in rows)

    assert run(["finetune", *common, f"out={tmp_path / 'lora'}", "lora.enabled=true", "lora.r=2"]) == 0
    assert run(["classify", f"checkpoint={tmp_path / 'lora' / 'adapter'}", f"input={data / 'test.csv'}",
                f"out={tmp_path / 'lora.csv'}", "device=cpu"]) == 0
    test = json.loads((tmp_path / "lora" / "metrics.json").read_text())["test"]
    assert f"accuracy {test['accuracy']:.4f}, MCC {test['mcc']:.4f}" in capsys.readouterr().out

    assert run(["predict", f"checkpoint={tmp_path / 'ft' / 'model'}", f"input={data / 'test.csv'}",
                f"out={tmp_path / 'll.parquet'}", "device=cpu"]) == 0
    note = capsys.readouterr().out.splitlines()[0]
    assert "is a fine-tuned classifier" in note and "dnalm classify" in note
    shutil.rmtree(tmp_path / "base")  # the adapter's base is gone: one line that says so
    with pytest.raises(SystemExit) as exc:
        main(["classify", f"checkpoint={tmp_path / 'lora' / 'adapter'}", f"input={data / 'test.csv'}",
              f"out={tmp_path / 'x.csv'}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "set base=PATH" in err
    with pytest.raises(SystemExit):
        main(["classify", f"checkpoint={tmp_path / 'ft'}", f"input={data / 'test.csv'}", f"out={tmp_path / 'y.csv'}"])
    assert "not a fine-tuned classifier" in capsys.readouterr().err and not (tmp_path / "y.csv").exists()
