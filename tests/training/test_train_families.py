"""``dnalm train`` / ``dnalm finetune task=lm`` for families other than the char-id causal ones: StripedHyena 2
(causal, Evo 2's byte ids, translated from the genome's ids), DNABERT-2 (masked LM on BPE-tokenized windows),
``dnalm tokenizer train``, LoRA continued pretraining, and the combinations that cannot work (one line each)."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dnalm.cli import main as cli_main
from dnalm.cli import run as cli_run
from dnalm.data.datasets import MaskedLMWindows, WindowDataset, genome_token_map, token_base_counts
from dnalm.data.prepare import GenomeSpec, prepare
from dnalm.data.prepared import PreparedGenome
from dnalm.errors import ConfigError
from dnalm.genome.fasta import iter_records
from dnalm.genome.splits import SplitSpec
from dnalm.genome.synth import SynthConfig, synthesize
from dnalm.models.dnabert2 import Dnabert2Config, Dnabert2Model, Dnabert2Tokenizer
from dnalm.models.io import load_pretrained
from dnalm.models.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from dnalm.models.stripedhyena import ByteTokenizer, StripedHyenaLM
from dnalm.tokenizers import EOS_ID, PAD_ID, CharTokenizer, KmerTokenizer, load_tokenizer
from dnalm.training.lightning import MaskedLM, OptimConfig
from dnalm.training.losses import IGNORE_INDEX, LMLoss, MaskedLMMetrics

pytestmark = pytest.mark.usefixtures("one_thread")

BPE_VOCAB = 64
SH2 = ["model=stripedhyena_tiny", "model.hidden_size=32", "model.num_attention_heads=2", "model.inner_mlp_size=64",
       "model.hcs_filter_groups=4", "model.hcm_filter_groups=4", "model.hcm_filter_length=16", "model.state_size=4"]
BERT = ["model=bert_tiny", "model.hidden_size=32", "model.intermediate_size=64", f"model.vocab_size={BPE_VOCAB}"]


@pytest.fixture(scope="module")
def genome(tmp_path_factory) -> tuple[Path, Path]:
    """(FASTA, prepared directory) of a small synthetic genome with soft-masked repeats and N gaps."""
    root = tmp_path_factory.mktemp("synthetic")
    files = synthesize(SynthConfig(n_chromosomes=3, chromosome_length=20_000, seed=3, n_gaps_per_mb=100.0,
                                   n_gap_min=20, n_gap_max=40), root / "genome")
    prepared = prepare([GenomeSpec("synthetic", str(files["fasta"]), str(files["gff3"]))], root / "prepared",
                       SplitSpec(strategy="records", val=["Chr3"], test=["Chr2"]))
    return Path(files["fasta"]), prepared


@pytest.fixture(scope="module")
def prepared(genome) -> Path:
    return genome[1]


@pytest.fixture(scope="module")
def bpe(prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "bpe"
    assert cli_run(["tokenizer train", f"data.prepared={prepared}", f"vocab_size={BPE_VOCAB}", f"out={out}"]) == 0
    return out


def common(prepared: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "trainer=cpu", f"data.prepared={prepared}", f"out={out}", "data.length=64", "data.batch_size=8",
            "data.eval_max_windows=16", "trainer.log_every_n_steps=1", "trainer.progress_bar=false", "logger=[csv]",
            "optim.warmup_steps=2", *extra]


# ---------------------------------------------------------------------------------------------
# Genome ids -> a family's vocabulary
# ---------------------------------------------------------------------------------------------


def test_token_map_asks_the_tokenizer():
    byte = genome_token_map(ByteTokenizer())
    assert [int(byte[0, i]) for i in range(7, 12)] == [ord(c) for c in "ACGTN"]
    assert [int(byte[1, i]) for i in range(7, 12)] == [ord(c) for c in "ACGTN"]  # Evo 2 folds case
    assert (byte[0, EOS_ID], byte[0, PAD_ID]) == (0, 1)
    keep = genome_token_map(ByteTokenizer(case="keep"))
    assert [int(keep[1, i]) for i in range(7, 12)] == [ord(c) for c in "acgtn"]
    assert genome_token_map(CharTokenizer()) is None  # dnalm's own ids: no translation
    with pytest.raises(ConfigError, match="cannot encode the base"):
        genome_token_map(KmerTokenizer(k=3))


def test_translated_window_matches_the_fasta_by_hand(genome):
    """A window holding soft-masked bases and N, fed as byte ids, equals the FASTA's characters: ord(c.upper())
    for Evo 2's tokenizer, ord(c) for one that keeps case."""
    fasta, prepared = genome
    pg = PreparedGenome(prepared)
    text = {r.name: r.seq.decode() for r in iter_records(fasta)}
    L = 4096
    ds = {case: WindowDataset(pg, "train", L, mode="strided", max_n_frac=1.0,
                              token_map=genome_token_map(ByteTokenizer(case=case))) for case in ("upper", "keep")}
    plain = WindowDataset(pg, "train", L, mode="strided", max_n_frac=1.0)
    offsets = {name: r.offset for name, r in pg.records.items()}
    found = 0
    for i in range(len(plain)):
        start = int(plain.window_starts([i])[0][0])
        record = max((name for name in offsets if offsets[name] <= start), key=lambda n: offsets[n])
        chars = text[record][start - offsets[record]: start - offsets[record] + L + 1]
        if len(chars) < L + 1 or not (any(c.islower() for c in chars) and "N" in chars.upper()):
            continue
        found += 1
        up, keep = ds["upper"].get_batch([i]), ds["keep"].get_batch([i])
        assert up["input_ids"][0].tolist() == [ord(c.upper()) for c in chars[:L]]
        assert up["targets"][0].tolist() == [ord(c.upper()) for c in chars[1:]]
        assert keep["input_ids"][0].tolist() == [ord(c) for c in chars[:L]]
        base = plain.get_batch([i])  # weights and regions are those of the untranslated window
        assert torch.equal(up["loss_weight"], base["loss_weight"]) and torch.equal(up["regions"], base["regions"])
        assert torch.equal(base["loss_weight"][0] == 0, torch.tensor([c in "Nn" for c in chars[1:]]))
        if found == 3:
            break
    assert found, "the synthetic genome has no window with both soft-masked bases and N"


# ---------------------------------------------------------------------------------------------
# StripedHyena 2 (causal, byte ids)
# ---------------------------------------------------------------------------------------------


def _sh2_run(prepared: Path, out: Path, *extra: str) -> list[str]:
    return common(prepared, out, *SH2, "trainer.max_steps=30", "trainer.val_check_interval=10",
                  "checkpoint.every_n_steps=10", "checkpoint.keep=3", "optim.lr=3e-3", *extra)


@pytest.fixture(scope="module")
def sh2_run(prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sh2") / "run"
    torch.set_num_threads(1)  # module fixtures run before the one_thread fixture
    assert cli_run(_sh2_run(prepared, out, "activation_checkpointing=true")) == 0
    return out


def test_stripedhyena_trains_on_byte_ids_with_region_metrics(sh2_run):
    metrics = json.loads((sh2_run / "metrics.json").read_text())
    assert metrics["objective"] == "causal" and metrics["global_step"] == 30
    with open(sh2_run / "metrics.csv", newline="") as f:
        val = [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]
    assert len(val) == 3 and val[-1] < val[0] - 0.05, val
    assert metrics["val"]["bits_per_base"] == pytest.approx(metrics["val"]["loss"] / math.log(2))
    assert {"bits_per_base/CDS", "bits_per_base/intergenic"} <= set(metrics["val"])
    model = load_pretrained(sh2_run / "model")
    assert isinstance(model, StripedHyenaLM)  # activation checkpointing left the keys alone
    assert load_tokenizer(sh2_run / "model") == ByteTokenizer()


def test_stripedhyena_resumes_to_the_same_model(sh2_run, prepared, tmp_path):
    """A run started from the uninterrupted run's step-10 checkpoint ends with its very weights (same data order,
    dropout and schedule)."""
    out = tmp_path / "resumed"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(sh2_run / "checkpoints" / "step-00000010", out / "checkpoints" / "step-00000010")
    assert cli_run(_sh2_run(prepared, out, "activation_checkpointing=true")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith("step-00000010") and metrics["global_step"] == 30
    a = load_pretrained(sh2_run / "checkpoints" / "last").state_dict()
    b = load_pretrained(out / "checkpoints" / "last").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_lm_with_lora_changes_only_the_adapters(sh2_run, prepared, tmp_path):
    """Continued pretraining of the StripedHyena checkpoint through LoRA on the family's targets: every weight
    outside them is the base's, the merged ones are W0 + (alpha / r) B A of the saved adapter."""
    from safetensors.torch import load_file

    out = tmp_path / "lora"
    assert cli_run(["finetune", "task=lm", f"checkpoint={sh2_run / 'model'}", f"data.prepared={prepared}",
                    f"out={out}", "data.length=64", "data.batch_size=8", "data.eval_max_windows=8",
                    "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.progress_bar=false",
                    "lora.enabled=true", "lora.r=2", "lora.alpha=4", "lora.dropout=0", "optim.lr=1e-2"]) == 0
    base = load_pretrained(sh2_run / "model").state_dict()
    tuned = load_pretrained(out / "model").state_dict()
    config = json.loads((out / "model" / "adapter" / ADAPTER_CONFIG).read_text())
    targets = tuple(config["target_modules"])
    assert set(targets) == {"projections", "out_filter_dense", "in_proj", "out_proj", "l1", "l2", "l3"}
    adapter = load_file(str(out / "model" / "adapter" / ADAPTER_WEIGHTS))
    changed = 0
    for key, w0 in base.items():
        module = key.rsplit(".", 1)[0]
        if key.endswith(".weight") and module.rsplit(".", 1)[-1] in targets:
            A = adapter[f"{module}.lora_A.default.weight"].double()
            B = adapter[f"{module}.lora_B.default.weight"].double()
            expect = w0.double() + (4 / 2) * B @ A
            torch.testing.assert_close(tuned[key].double(), expect, rtol=0, atol=1e-6 * float(expect.abs().max()))
            changed += int(not torch.equal(tuned[key], w0))
        else:
            assert torch.equal(tuned[key], w0), key
    assert changed > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and metrics["objective"] == "causal"


# ---------------------------------------------------------------------------------------------
# DNABERT-2 (masked LM on BPE tokens)
# ---------------------------------------------------------------------------------------------


def test_tokenizer_train_writes_a_tokenizer_whose_ids_round_trip(bpe, prepared):
    tok = load_tokenizer(bpe)
    assert isinstance(tok, Dnabert2Tokenizer) and 9 < tok.vocab_size <= BPE_VOCAB
    pg = PreparedGenome(prepared)
    ds = MaskedLMWindows(WindowDataset(pg, "val", 200, mode="strided", max_n_frac=1.0), tok)
    for text in ds.texts(np.arange(min(len(ds), 20))):
        ids = tok.encode(text)
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
        assert tok.decode(ids) == text.upper()  # N is [UNK], one per character, decoded as N
        assert len(ids) - 2 < len(text) or len(text) < 4  # merges were learnt


def test_tokenizer_train_mistakes_fail_with_one_line(prepared, tmp_path, capsys):
    for argv, message in [([f"data.prepared={prepared}"], "set out=DIR"),
                          ([f"data.prepared={prepared}", f"out={tmp_path / 't'}", "vocab_size=4"], "at least 9"),
                          ([f"data.prepared={prepared}", f"out={tmp_path / 't'}", "split=nope"], "no split 'nope'"),
                          ([f"data.prepared={tmp_path}", f"out={tmp_path / 't'}"], "not a prepared dataset")]:
        with pytest.raises(SystemExit) as exc:
            cli_main(["tokenizer", "train", *argv])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "t").exists()


@pytest.fixture(scope="module")
def bert_run(prepared, bpe, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bert") / "run"
    torch.set_num_threads(1)
    assert cli_run(common(prepared, out, *BERT, f"model.tokenizer={bpe}", "model.hidden_dropout_prob=0",
                          "data.length=128", "trainer.max_steps=40", "trainer.val_check_interval=10",
                          "checkpoint.every_n_steps=20", "optim.lr=3e-3", "test=true")) == 0
    return out


def test_dnabert2_trains_by_masked_lm(bert_run):
    metrics = json.loads((bert_run / "metrics.json").read_text())
    assert metrics["objective"] == "masked"
    with open(bert_run / "metrics.csv", newline="") as f:
        val = [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]
    assert len(val) == 4 and val[-1] < val[0] and val[-1] < math.log(BPE_VOCAB) - 0.3, val  # below uniform
    for split in ("val", "test"):
        m = metrics[split]
        assert set(m) == {"loss", "acc", "ppl", "bits_per_masked_base"}
        assert m["ppl"] == pytest.approx(math.exp(m["loss"])) and 0 < m["acc"] < 1
    assert "bits_per_base" not in metrics["val"]  # no causal bits/base for a masked model


def test_dnabert2_model_and_its_tokenizer_reload(bert_run, bpe):
    model = load_pretrained(bert_run / "model")
    assert isinstance(model, Dnabert2Model) and model.config.vocab_size == BPE_VOCAB
    tok = load_tokenizer(bert_run / "model")
    assert isinstance(tok, Dnabert2Tokenizer) and tok.vocab == load_tokenizer(bpe).vocab
    ids = tok.encode_batch(["ACGTACGGTTACAGATTACA", "GGGCCCAAAT"])
    logits = model(ids["input_ids"], ids["attention_mask"])
    assert logits.shape == (*ids["input_ids"].shape, BPE_VOCAB) and torch.isfinite(logits).all()


def test_masking_statistics_and_fixed_evaluation_masks(bpe):
    """15 % of the real, non-special tokens are picked; of those 80 % [MASK], 10 % random, 10 % kept (within five
    binomial standard deviations); specials and padding never; evaluation masks are the same every time."""
    tok = load_tokenizer(bpe)
    model = Dnabert2Model(Dnabert2Config(vocab_size=BPE_VOCAB, hidden_size=16, num_hidden_layers=1,
                                         num_attention_heads=1, intermediate_size=16))
    module = MaskedLM(model, OptimConfig(), 1, tok.alphabet, mask_rate=0.15, seed=1)
    g = torch.Generator().manual_seed(0)
    B, T = 64, 256
    ids = torch.randint(5, tok.vocab_size, (B, T), generator=g)
    ids[:, 0], ids[:, 199] = tok.bos_id, tok.eos_id  # [CLS] ... [SEP], then padding
    mask = torch.ones(B, T, dtype=torch.long)
    mask[:, 200:] = 0
    ids[:, 200:] = tok.pad_id
    padding = torch.zeros(B, dtype=torch.bool)
    padding[-4:] = True  # rows that even out distributed evaluation
    batch = {"input_ids": ids, "attention_mask": mask, "padding": padding}
    eligible = mask.bool() & ~padding[:, None]
    eligible[:, 0] = eligible[:, 199] = False
    torch.manual_seed(5)
    masked, labels = module._masked(batch, None)
    picked = labels != IGNORE_INDEX
    assert not (picked & ~eligible).any() and torch.equal(labels[picked], ids[picked])
    n = int(eligible.sum())
    p = picked.sum().item() / n
    assert abs(p - 0.15) < 5 * math.sqrt(0.15 * 0.85 / n)
    k = int(picked.sum())
    as_mask = (masked[picked] == tok.mask_id).float().mean().item()
    kept = (masked[picked] == ids[picked]).float().mean().item()
    assert abs(as_mask - 0.8) < 5 * math.sqrt(0.16 / k)
    assert abs(kept - 0.1) < 5 * math.sqrt(0.09 / k) + 1 / tok.vocab_size  # random draws may hit the same id
    assert torch.equal(masked[~picked], ids[~picked])
    first = module._masked(batch, torch.Generator().manual_seed(7))
    again = module._masked(batch, torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_masked_lm_metrics_by_hand():
    """Two batches: loss is the mean over every masked token of the epoch, bits per masked base the summed
    bits over the bases those tokens cover."""
    m = MaskedLMMetrics()
    ce = torch.tensor([[1.0, 0.0, 2.0], [0.5, 0.0, 0.0]])
    weight = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    correct = torch.tensor([[True, True, False], [True, False, False]])
    bases = torch.tensor([[3.0, 9.0, 1.0], [4.0, 9.0, 9.0]])
    m.update(LMLoss(ce.sum(), ce, weight, correct), bases)
    out = m.compute()
    assert out["loss"] == pytest.approx(3.5 / 3) and out["acc"] == pytest.approx(2 / 3)
    assert out["bits_per_masked_base"] == pytest.approx(3.5 / 8 / math.log(2))


def test_token_base_counts(bpe):
    tok = load_tokenizer(bpe)
    counts = token_base_counts(tok)
    assert counts[tok.unk_id] == 1 and counts[[tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id]].sum() == 0
    for token, i in tok.vocab.items():
        if not token.startswith("["):
            assert counts[i] == len(token)


# ---------------------------------------------------------------------------------------------
# Caduceus (masked LM on dnalm's character ids: no BPE, no translation)
# ---------------------------------------------------------------------------------------------

CADUCEUS = ["model=caduceus_small", "model.d_model=16", "model.n_layer=1", "model.d_state=4"]


def _caduceus_run(prepared: Path, out: Path) -> list[str]:
    return common(prepared, out, *CADUCEUS, "data.length=32", "data.eval_max_windows=8", "trainer.max_steps=12",
                  "trainer.val_check_interval=6", "checkpoint.every_n_steps=6", "checkpoint.keep=2", "optim.lr=1e-2")


@pytest.fixture(scope="module")
def caduceus_run(prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("caduceus") / "run"
    torch.set_num_threads(1)
    assert cli_run(_caduceus_run(prepared, out)) == 0
    return out


def test_caduceus_trains_by_masked_lm_on_character_ids(caduceus_run):
    """The masked family that reads dnalm's own ids: masked-LM metrics, validation loss falling below uniform over
    the 12 ids, training loss falling, and a CaduceusLM with the character tokenizer saved beside it."""
    from dnalm.models.mamba import CaduceusLM

    metrics = json.loads((caduceus_run / "metrics.json").read_text())
    assert metrics["objective"] == "masked" and metrics["global_step"] == 12
    assert set(metrics["val"]) == {"loss", "acc", "ppl", "bits_per_masked_base"}
    with open(caduceus_run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    train = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(val) == 2 and val[-1] < val[0] and val[-1] < math.log(12) - 0.5, val
    assert np.mean(train[-4:]) < np.mean(train[:4]) - 0.3, train
    model = load_pretrained(caduceus_run / "model")
    assert isinstance(model, CaduceusLM) and model.config.rcps and model.config.d_model == 16
    assert load_tokenizer(caduceus_run / "model") == CharTokenizer()


def test_caduceus_resumes_to_the_same_model(caduceus_run, prepared, tmp_path):
    """Resumed from the uninterrupted run's step-6 checkpoint, the run ends with its very weights (the same masks,
    data order and schedule)."""
    out = tmp_path / "resumed"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(caduceus_run / "checkpoints" / "step-00000006", out / "checkpoints" / "step-00000006")
    assert cli_run(_caduceus_run(prepared, out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith("step-00000006") and metrics["global_step"] == 12
    a = load_pretrained(caduceus_run / "checkpoints" / "last").state_dict()
    b = load_pretrained(out / "checkpoints" / "last").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    mid = load_pretrained(caduceus_run / "checkpoints" / "step-00000006").state_dict()
    assert not all(torch.equal(a[k], mid[k]) for k in a)  # it trained after the checkpoint


def test_masked_lm_loss_is_generic(caduceus_run):
    """mlm_loss (the head on the masked positions only) equals the cross-entropy of the full forward's logits at
    those positions, for Caduceus as for DNABERT-2 (a float64 model; the loss is taken from float32 logits)."""
    from dnalm.models.dnabert2 import mlm_loss, mlm_mask
    from tolerance import float32_tolerance, scale_of

    model = load_pretrained(caduceus_run / "model").double()
    tok = CharTokenizer()
    ids = tok.encode_batch(["ACGTTGACNNACGGATTACA", "GGGATCCA"], padding=True, return_tensors="pt")
    masked, labels = mlm_mask(ids["input_ids"], tok.alphabet, 0.4, torch.Generator().manual_seed(1),
                              ids["attention_mask"])
    out = mlm_loss(model, {"input_ids": masked, "labels": labels, "attention_mask": ids["attention_mask"]})
    logits = model(masked, ids["attention_mask"])
    picked = labels != IGNORE_INDEX
    assert int(picked.sum()) > 3
    ref = torch.nn.functional.cross_entropy(logits[picked], labels[picked], reduction="none")
    tol = float32_tolerance(2, 1, scale_of([logits]))
    torch.testing.assert_close(out.ce[picked].double(), ref.detach(), **tol)
    assert abs(float(out.loss) - float(ref.mean())) < tol["atol"]
    assert torch.equal(out.weight, picked.float())


# ---------------------------------------------------------------------------------------------
# Combinations that cannot train
# ---------------------------------------------------------------------------------------------


def test_bad_combinations_fail_with_one_line(prepared, bpe, tmp_path, capsys):
    kmer, byte = tmp_path / "kmer", tmp_path / "byte"
    KmerTokenizer(k=3).save(kmer)
    ByteTokenizer().save(byte)
    cases = [
        (BERT, "no built-in tokenizer; set model.tokenizer=PATH"),
        ([*BERT, f"model.tokenizer={bpe}", "model.vocab_size=16"], "model.vocab_size=16 is smaller than"),
        ([*BERT, f"model.tokenizer={byte}", "model.vocab_size=512"], "needs a tokenizer with a [MASK] token"),
        ([*SH2, f"model.tokenizer={kmer}"], "model.family=stripedhyena: the kmer tokenizer cannot encode the base"),
        ([*SH2, f"model.tokenizer={tmp_path / 'none'}"], "no such tokenizer"),
        ([*BERT, f"model.tokenizer={bpe}", "mask_rate=1.5"], "mask_rate=1.5 must be in (0, 1)"),
    ]
    for i, (extra, message) in enumerate(cases):
        with pytest.raises(SystemExit) as exc:
            cli_main(common(prepared, tmp_path / f"r{i}", "trainer.max_steps=2", *extra))
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and err.count("\n") == 1, err
        assert not (tmp_path / f"r{i}" / "model").exists()


# ---------------------------------------------------------------------------------------------
# bf16 and activation checkpointing
# ---------------------------------------------------------------------------------------------


def test_activation_checkpointing_finds_the_blocks_of_every_family():
    """checkpoint_blocks wraps the n_layer blocks of a masked encoder too, keeps its keys and its gradients."""
    from dnalm.training.lightning import checkpoint_blocks

    config = Dnabert2Config(vocab_size=32, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                            intermediate_size=24, hidden_dropout_prob=0.0)
    torch.manual_seed(0)
    plain = Dnabert2Model(config).double().train()
    wrapped = Dnabert2Model(config).double().train()
    wrapped.load_state_dict(plain.state_dict())
    keys = list(wrapped.state_dict())
    assert checkpoint_blocks(wrapped) == 3 and checkpoint_blocks(wrapped) == 0 and list(wrapped.state_dict()) == keys
    ids = torch.randint(5, 32, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    for model in (plain, wrapped):
        model(ids, mask).sum().backward()
    for (name, a), b in zip(plain.named_parameters(), wrapped.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12, msg=name)


@pytest.mark.parametrize("family", ["stripedhyena", "dnabert2"])
def test_bf16_mixed_training_with_activation_checkpointing(family, prepared, bpe, tmp_path):
    """trainer.precision=bf16-mixed and activation_checkpointing=true train both families (on the CPU here; the
    GPU runs of the yeast experiments use the same path) and save float32 weights."""
    model = SH2 if family == "stripedhyena" else [*BERT, f"model.tokenizer={bpe}"]
    out = tmp_path / "run"
    try:
        code = cli_run(common(prepared, out, *model, "trainer.precision=bf16-mixed", "activation_checkpointing=true",
                              "trainer.max_steps=3", "trainer.val_check_interval=3", "data.eval_max_windows=4"))
    except RuntimeError as exc:  # a CPU whose kernels lack some bf16 operation
        pytest.skip(f"bf16 autocast training on this CPU: {exc}")
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 3 and math.isfinite(metrics["val"]["loss"])
    assert all(p.dtype == torch.float32 for p in load_pretrained(out / "model").parameters())


@pytest.mark.parametrize("family", ["stripedhyena", "dnabert2"])
def test_finetune_lm_continues_any_family_in_full(family, sh2_run, bert_run, prepared, tmp_path):
    """task=lm from a StripedHyena or DNABERT-2 checkpoint (its own tokenizer travels with it): with lr 0 the saved
    model is the checkpoint's, with the checkpoint's tokenizer beside it."""
    checkpoint = (sh2_run if family == "stripedhyena" else bert_run) / "model"
    out = tmp_path / "lm"
    assert cli_run(["finetune", "task=lm", f"checkpoint={checkpoint}", f"data.prepared={prepared}", f"out={out}",
                    "data.length=64", "data.batch_size=8", "data.eval_max_windows=4", "trainer.max_steps=2",
                    "trainer.val_check_interval=2", "trainer.progress_bar=false", "optim.lr=0"]) == 0
    base, tuned = load_pretrained(checkpoint).state_dict(), load_pretrained(out / "model").state_dict()
    assert all(torch.equal(base[k], tuned[k]) for k in base)
    assert load_tokenizer(out / "model").to_config() == load_tokenizer(checkpoint).to_config()
    assert json.loads((out / "metrics.json").read_text())["objective"] == ("causal" if family == "stripedhyena"
                                                                          else "masked")
