"""Throughput of random-window loading from a prepared directory (tokens per second).

Usage::

    python benchmarks/loader_bench.py                      # a synthetic 64 Mb prepared genome
    python benchmarks/loader_bench.py --prepared DIR       # a real one (its 'train' split)
    python benchmarks/loader_bench.py --lengths 1024 32768 --batch-tokens 1048576 --seconds 3

For each window length ``L`` a batch holds ``batch_tokens // L`` windows; the figure is the number
of input tokens per second that :meth:`WindowDataset.get_batch` delivers (all four tensors built:
input ids, targets, regions and loss weights), single process. ``--loader`` also times a
``DataLoader`` over the GenomeDataModule with ``--workers`` processes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from dnalm.data.datamodule import GenomeDataConfig, GenomeDataModule
from dnalm.data.datasets import WindowDataset
from dnalm.data.prepared import PreparedGenome


def synthetic_prepared(path: Path, bases: int, seed: int = 0) -> Path:
    """A prepared directory of ``bases`` random bases in 8 records, 1% N, 30% soft-masked, 90/10 split."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(7, 11, bases, dtype=np.uint8)
    tokens[rng.random(bases) < 0.01] = 11
    regions = rng.integers(0, 7, bases, dtype=np.uint8) | np.where(rng.random(bases) < 0.3, 0x80, 0).astype(np.uint8)
    regions[tokens == 11] = 7
    path.mkdir(parents=True, exist_ok=True)
    tokens.tofile(path / "tokens.u8")
    regions.tofile(path / "regions.u8")
    per = bases // 8
    records = [{"name": f"chr{i}", "genome": "synthetic", "length": per if i < 7 else bases - 7 * per,
                "offset": i * per, "n_count": 0, "softmasked": 0} for i in range(8)]
    manifest = {"format": "dnalm-prepared/1", "dnalm_version": "bench", "tokenizer": {"type": "char"},
                "genomes": [{"name": "synthetic", "weight": 1.0}], "records": records,
                "region_classes": ["intergenic", "CDS", "UTR", "exon_other", "intron", "promoter", "repeat", "N"],
                "class_counts": {}, "total_length": bases}
    cut = {r["name"]: int(r["length"] * 0.9) for r in records}
    splits = {"train": [[r["name"], 0, cut[r["name"]]] for r in records],
              "val": [[r["name"], cut[r["name"]], r["length"]] for r in records], "test": []}
    (path / "manifest.json").write_text(json.dumps(manifest))
    (path / "splits.json").write_text(json.dumps({"strategy": "bench", "splits": splits}))
    return path


def time_batches(ds: WindowDataset, batch: int, seconds: float) -> float:
    """Input tokens per second of ``get_batch`` over consecutive batches for about ``seconds``."""
    ds.get_batch(np.arange(batch))
    n, i, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        idx = np.arange(i, i + batch) % len(ds)
        n += ds.get_batch(idx)["input_ids"].numel()
        i += batch
    return n / (time.perf_counter() - t0)


def time_loader(prepared: PreparedGenome, length: int, batch: int, workers: int, seconds: float) -> float:
    cfg = GenomeDataConfig(path=str(prepared.path), length=length, batch_size=batch, num_workers=workers,
                           samples_per_epoch=1 << 30)
    dm = GenomeDataModule(cfg, prepared)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += next(it)["input_ids"].numel()
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepared", type=Path, help="a prepared directory (default: a synthetic one)")
    p.add_argument("--bases", type=int, default=64 << 20, help="size of the synthetic genome")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 8192, 131072])
    p.add_argument("--batch-tokens", type=int, default=1 << 20)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--rc-aug", action="store_true", help="reverse complement half of the windows")
    p.add_argument("--loader", action="store_true", help="also time a DataLoader with --workers processes")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.prepared or synthetic_prepared(Path(tmp) / "prepared", args.bases)
        prepared = PreparedGenome(path)
        print(f"{prepared}")
        print(f"{'L':>8} {'batch':>6} {'Mtokens/s':>10}" + (f" {'loader Mtok/s':>14}" if args.loader else ""))
        for length in args.lengths:
            batch = max(1, args.batch_tokens // length)
            ds = WindowDataset(prepared, "train", length, rc_aug=args.rc_aug, samples_per_epoch=1 << 30)
            rate = time_batches(ds, batch, args.seconds)
            line = f"{length:>8} {batch:>6} {rate / 1e6:>10.1f}"
            if args.loader:
                line += f" {time_loader(prepared, length, batch, args.workers, args.seconds) / 1e6:>14.1f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
