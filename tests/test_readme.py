"""The README's "A genome, end to end" as a new user runs it: every ``dnalm ...`` line of its code block, as
written, in one working folder on a machine without a GPU, at tiny sizes (overrides appended to each line),
then its Python example. The inputs the README assumes (a yeast-like genome named as NCBI names yeast, a
polyploid crop, GUE-style CSVs, an official HyenaDNA checkpoint, sequences, intervals, variants) are made
small in that folder first. A README line without an entry in TINY fails the test, so that the two stay in
step."""

from __future__ import annotations

import csv
import gzip
import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dnalm.cli import run
from dnalm.genome.synth import SynthConfig, synthesize

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

# Tiny sizes appended to each README line (Hydra: the last value of a key wins).
TRAIN = ["model.d_model=16", "model.n_layer=2", "data.length=128", "data.batch_size=4", "data.eval_max_windows=2",
         "data.num_workers=0", "trainer.max_steps=4", "trainer.val_check_interval=2", "logger=[csv]"]
FINETUNE = ["trainer.max_epochs=1", "data.batch_size=16", "data.eval_batch_size=16"]
BENCHMARK = ["next_base.window=128", "next_base.min_context=32", "next_base.max_bases=3000",
             "promoters.max_promoters=10", "promoters.window=100", "probes.window=100", "probes.train_per_class=8",
             "probes.test_per_class=4", "generation.n_prompts=3", "generation.n_cds_prompts=3",
             "generation.prompt_length=64", "generation.length=16", "markov.orders=[1,2]", "tsne_points=30"]
TINY: dict[str, list[str]] = {
    "dnalm prepare genome=yeast.fna.gz annotation=yeast.gff.gz out=prepared/yeast split.strategy=records "
    "split.val=[BK006947.3] split.test=[BK006948.2,BK006949.2]": [],
    "dnalm prepare genome=crop.fa.gz annotation=crop.gff3.gz out=prepared/crop split.strategy=homology "
    "split.group_by=auto": [],
    "dnalm train experiment=yeast/hyena_small data.prepared=prepared/yeast model.d_model=256 model.n_layer=4": TRAIN,
    "dnalm config show train experiment=yeast/hyena_small": [],
    "dnalm plot curves input=runs/yeast_hyena_small/metrics.csv out=curves.png": [],
    "dnalm finetune checkpoint=runs/yeast_hyena_small/model task=gue_prom_core_all data_root=data out=runs/prom "
    "trainer=gpu data.rc_aug=true data.rc_eval=true": FINETUNE,
    "dnalm finetune checkpoint=hyenadna-tiny-1k-seqlen task=lm data.prepared=prepared/crop out=runs/crop_lm":
        ["data.length=64", "data.batch_size=2", "data.eval_max_windows=2", "trainer.max_steps=2",
         "trainer.val_check_interval=2"],
    "dnalm finetune checkpoint=hyenadna-tiny-1k-seqlen task=gue_tf0 data_root=data lora.enabled=true "
    "out=runs/tf0_lora": FINETUNE,
    "dnalm classify checkpoint=runs/prom/model input=new.csv out=classes.csv": [],
    "dnalm predict checkpoint=runs/yeast_hyena_small/model input=seqs.fa out=ll.parquet": [],
    "dnalm predict checkpoint=runs/yeast_hyena_small/model input=regions.bed reference=genome.fa "
    "out=regions.parquet": [],
    "dnalm generate checkpoint=runs/yeast_hyena_small/model prompts=[ATGGCT] max_new_tokens=500 n_samples=8 "
    "out=gen.fasta": ["max_new_tokens=40"],
    "dnalm embed checkpoint=runs/yeast_hyena_small/model input=chr1.fa pool=none out=emb/": [],
    "dnalm score-variants checkpoint=runs/yeast_hyena_small/model variants=calls.vcf reference=genome.fa "
    "out=delta.tsv": ["window=256"],
    "dnalm benchmark prepared=prepared/yeast models=[runs/yeast_hyena_small/model] out=bench/yeast": BENCHMARK,
    "dnalm report results=bench/yeast": [],
}
# The yeast records the README names (NCBI accessions), with the headers NCBI gives them.
YEAST = {"Chr1": ("BK006935.2", "chromosome I"), "Chr2": ("BK006947.3", "chromosome XIV"),
         "Chr3": ("BK006948.2", "chromosome XV"), "Chr4": ("BK006949.2", "chromosome XVI")}


def readme_commands() -> list[list[str]]:
    """The ``dnalm`` lines of the README's "A genome, end to end" block, as the shell splits them."""
    text = (REPO / "README.md").read_text()
    block = text.split("## A genome, end to end", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.strip().startswith("dnalm ")]


def _key(argv: list[str]) -> str:
    return " ".join(argv)


def test_every_readme_command_has_tiny_sizes():
    keys = [_key(argv) for argv in readme_commands()]
    assert len(keys) == len(set(keys)) and set(keys) == set(TINY), set(keys) ^ set(TINY)


def _rename(text: str, names: dict[str, str]) -> str:
    for old, new in sorted(names.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(f"{old}\t", f"{new}\t").replace(f">{old}\n", f">{new}\n").replace(f" {old} ", f" {new} ")
    return text


def _gzip(path: Path, text: str) -> None:
    with gzip.open(path, "wt") as f:
        f.write(text)


def _labeled_csv(path: Path, n: int, rng: np.random.Generator, length: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ["sequence,label"]
    for i in range(n):
        seq = "".join(rng.choice(list("ACGT"), length))
        if i % 2:
            seq = seq[:20] + "TATAAAAG" + seq[28:]
        rows.append(f"{seq},{i % 2}")
    path.write_text("\n".join(rows) + "\n")


def make_inputs(root: Path) -> dict[str, str]:
    """The files the README's commands read, in ``root``; returns the yeast genome's records."""
    rng = np.random.default_rng(0)
    yeast = synthesize(SynthConfig(n_chromosomes=4, chromosome_length=12_000, seed=1, genes_per_mb=250),
                       root / "synth_yeast")
    names = {old: new for old, (new, _) in YEAST.items()}
    fasta = yeast["fasta"].read_text()
    for old, (new, chrom) in YEAST.items():
        fasta = fasta.replace(f">{old}\n", f">{new} TPA_inf: Saccharomyces cerevisiae S288C {chrom}, complete "
                                           "sequence\n")
    _gzip(root / "yeast.fna.gz", fasta)
    _gzip(root / "yeast.gff.gz", _rename(yeast["gff3"].read_text(), names))
    (root / "genome.fa").write_text(fasta)
    records = {}
    for chunk in fasta.split(">")[1:]:
        header, _, seq = chunk.partition("\n")
        records[header.split()[0]] = seq.replace("\n", "")
    crop = synthesize(SynthConfig(n_chromosomes=3, chromosome_length=10_000, ploidy=3, seed=2), root / "synth_crop")
    _gzip(root / "crop.fa.gz", crop["fasta"].read_text())
    _gzip(root / "crop.gff3.gz", crop["gff3"].read_text())
    for task, length in (("prom/prom_core_all", 70), ("tf/0", 101)):
        for split, n in (("train", 48), ("dev", 16), ("test", 16)):
            _labeled_csv(root / "data" / "gue" / task / f"{split}.csv", n, rng, length)
    _labeled_csv(root / "new.csv", 6, rng, 70)
    shutil.copytree(REPO / "tests" / "fixtures" / "hyenadna_tiny1k" / "hub_lightning", root / "hyenadna-tiny-1k-seqlen")
    chr1 = records["BK006935.2"]
    (root / "seqs.fa").write_text(f">a\n{chr1[100:400]}\n>b with an N gap\n{chr1[1000:1100]}NNNNN{chr1[1200:1300]}\n")
    (root / "chr1.fa").write_text(f">chrI part\n{chr1[:3000]}\n")
    (root / "regions.bed").write_text("chrI\t100\t400\tup\t0\t+\nchrI\t500\t800\tdown\t0\t-\n")
    wrong = {"A": "C", "C": "G", "G": "T", "T": "A"}
    calls = ["##fileformat=VCFv4.2", "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    for pos in (500, 2000, 4000):
        base = chr1[pos - 1]
        calls.append(f"chrI\t{pos}\t.\t{base}\t{wrong[base]}\t.\t.\t.")
    calls.append(f"chrI\t3000\tbad\t{wrong[chr1[2999]]}\tA\t.\t.\t.")  # REF does not match: skipped, counted
    (root / "calls.vcf").write_text("\n".join(calls) + "\n")
    return records


def test_readme_runs_as_written_on_a_cpu_only_machine(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    records = make_inputs(tmp_path)
    printed = {}
    for argv in readme_commands():
        key = _key(argv)
        assert run(argv[1:] + TINY[key]) == 0, key
        printed[key] = capsys.readouterr()

    # what each step left behind, read as a user would
    assert json.loads((tmp_path / "prepared" / "yeast" / "splits.json").read_text())["splits"]["val"] == [
        ["BK006947.3", 0, len(records["BK006947.3"])]]
    model = json.loads((tmp_path / "runs" / "yeast_hyena_small" / "model" / "config.json").read_text())["config"]
    assert model["d_inner"] == 4 * model["d_model"]
    train = next(v for k, v in printed.items() if k.startswith("dnalm train"))
    assert "no GPU found, running on the CPU" in train.out and "Traceback" not in train.err
    with open(tmp_path / "classes.csv") as f:
        classes = list(csv.DictReader(f))
    assert len(classes) == 6 and {"p_0", "p_1", "predicted", "label"} <= set(classes[0])
    ll = pq.read_table(tmp_path / "ll.parquet").to_pydict()
    assert ll["n_skipped"] == [0, 5] and all(-4 < v < 0 for v in ll["log_likelihood"])  # a mean per base, not a sum
    assert pq.read_table(tmp_path / "regions.parquet").to_pydict()["id"] == ["up", "down"]
    assert len([ln for ln in (tmp_path / "gen.fasta").read_text().splitlines() if ln.startswith(">")]) == 8
    assert (tmp_path / "emb" / "chrI.npy").is_file()
    with open(tmp_path / "delta.tsv") as f:
        deltas = list(csv.DictReader(f, delimiter="\t"))
    assert [int(r["pos"]) for r in deltas] == [500, 2000, 4000] and deltas[0]["chrom"] == "chrI"
    variants = next(v for k, v in printed.items() if k.startswith("dnalm score-variants"))
    assert "chrI -> BK006935.2" in variants.out and "1 not matching the reference skipped" in variants.out
    bench = next(v for k, v in printed.items() if k.startswith("dnalm benchmark")).out.splitlines()
    assert len(bench) == 4 and max(len(ln) for ln in bench[1:]) < 130  # a headline table, not 30 columns
    assert (tmp_path / "bench" / "yeast" / "report.html").is_file() and (tmp_path / "curves.png").is_file()

    # the Python example, with the generation fitting the tiny model's context (130 tokens)
    text = (REPO / "README.md").read_text()
    example = text.split("From Python:", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert "max_new_tokens=200" in example
    scope: dict = {}
    exec(compile(example.replace("max_new_tokens=200", "max_new_tokens=40"), "README.md", "exec"), scope)
    m = scope["m"]
    assert m.score(["ACGTACGT", "GGGCCC"]).shape == (2,) and m.embed(["ACGT" * 1000]).shape == (1, 16)
