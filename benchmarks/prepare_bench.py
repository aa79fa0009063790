"""Throughput and peak memory of ``dnalm prepare`` (:func:`dnalm.data.prepare.prepare`).

Two genomes: yeast R64 (12.1 Mb, gzip FASTA + NCBI GFF3, from ../shared/data) and a synthetic
polyploid genome about ten times larger (``--synthetic-mb``, default 120: 20 chromosomes x 4
homologous copies of 1.5 Mb, so its records are as long as yeast's largest and only the genome
grows), written to a temporary directory. Each is prepared with and without its annotation, to
separate GFF3 parsing and region tracks from the rest.

Every measurement runs in a fresh child process:

* a warm-up: ``prepare`` of a tiny genome of the same kind (with the case's split and an
  annotation if the case has one), so that one-time costs (modules imported on first use, such
  as tqdm, numpy.random and importlib.metadata) are not counted; ``--cold`` leaves it out;
* throughput: bases per CPU second of the child (user + system), i.e. Mb/s per core, and wall time;
* peak resident memory of the child while ``prepare`` runs and its growth over the resident memory
  just before: on Linux the high-water mark ``VmHWM`` of ``/proc/self/status``, reset before the
  call through ``/proc/self/clear_refs`` (``ru_maxrss`` is not used there: a child started by
  ``subprocess`` inherits the parent's peak through it, e.g. that of synthesizing the genome);
  elsewhere ``resource.getrusage(...).ru_maxrss`` over the process after imports;
* peak traced Python/numpy allocation (``tracemalloc``) in a second run of the same child (first
  repetition only).

Each case is measured ``--repeat`` times (default 3; the machine may be shared and noisy): the
table gives the best CPU and wall time and the largest peak and growth of memory. ``--src DIR``
(repeatable) measures the package found in each source directory instead of the installed one,
interleaved case by case, e.g. a checkout of an older commit against the working tree; rows then
name their source.

Usage::

    python benchmarks/prepare_bench.py [--synthetic-mb 120] [--no-yeast] [--no-synthetic] [--repeat 3]
                                       [--cold] [--src OLD/src --src src]

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
YEAST_FASTA = SHARED / "yeast_r64" / "GCA_000146045.2_R64_genomic.fna.gz"
YEAST_GFF = SHARED / "yeast_r64" / "GCA_000146045.2_R64_genomic.gff.gz"


def _status_kb(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (Linux), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def start_peak_rss() -> int:
    """Reset the peak resident set size where possible; return the size to measure growth from (kB)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        now = _status_kb("VmRSS")
    except OSError:
        now = _status_kb("VmHWM")  # not resettable: growth of the peak since the process started
    return now if now is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_kb() -> int:
    """The peak resident set size since :func:`start_peak_rss` (kB)."""
    hwm = _status_kb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(spec: dict) -> dict:
    """Run prepare once for timing and, if asked, once under tracemalloc; return the measurements."""
    import tracemalloc

    from dnalm.data.prepare import GenomeSpec, prepare
    from dnalm.genome.splits import SplitSpec

    genomes = [GenomeSpec(spec["name"], spec["fasta"], spec["annotation"])]
    split = SplitSpec(**spec["split"])
    if spec["warm_up"]:
        warm_up(spec, Path(spec["out"]) / "warm-up")
    base_rss = start_peak_rss()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    out = prepare(genomes, Path(spec["out"]) / "timed", split)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    peak_rss = peak_rss_kb()
    manifest = json.loads((out / "manifest.json").read_text())
    traced = float("nan")
    if spec["tracemalloc"]:
        tracemalloc.start()
        prepare(genomes, Path(spec["out"]) / "traced", split)
        traced = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return {
        "bases": manifest["total_length"],
        "records": len(manifest["records"]),
        "longest": max(r["length"] for r in manifest["records"]),
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mb": peak_rss / 1024,
        "rss_growth_mb": (peak_rss - base_rss) / 1024,
        "traced_peak_mb": traced,
    }


def warm_up(spec: dict, out: Path) -> None:
    """Prepare a tiny genome like the case's: records named as in its split plus three more, 3 kb each."""
    from dnalm.data.prepare import GenomeSpec, prepare
    from dnalm.genome.splits import SplitSpec

    rng = random.Random(0)
    names = [*spec["split"].get("val", []), *spec["split"].get("test", []), "w1", "w2", "w3"]
    out.mkdir(parents=True)
    fasta = out / "warm.fa"
    fasta.write_text("".join(f">{n}\n{''.join(rng.choices('ACGTacgtN', k=3000))}\n" for n in names))
    gff = None
    if spec["annotation"]:
        gff = out / "warm.gff3"
        gff.write_text("##gff-version 3\n" + "".join(
            f"w1\tw\t{t}\t{s}\t{e}\t.\t+\t{p}\t{a}\n" for t, s, e, p, a in [
                ("gene", 100, 900, ".", "ID=g"), ("mRNA", 100, 900, ".", "ID=t;Parent=g"),
                ("exon", 100, 900, ".", "Parent=t"), ("CDS", 200, 800, "0", "Parent=t")]))
    prepare([GenomeSpec("w", str(fasta), gff and str(gff))], out / "prepared", SplitSpec(**spec["split"]))


def measure(spec: dict, src: str | None) -> dict:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(src).resolve())] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def best(runs: list[dict]) -> dict:
    """Best times and worst memory over repeated measurements of one case."""
    out = dict(runs[0])
    for key in ("wall_s", "cpu_s"):
        out[key] = min(r[key] for r in runs)
    for key in ("peak_rss_mb", "rss_growth_mb"):
        out[key] = max(r[key] for r in runs)
    return out


def synthesize_large(target_mb: float, out: Path) -> dict[str, Path]:
    from dnalm.genome.synth import SynthConfig, synthesize

    n_chrom = max(1, round(target_mb * 1e6 / (4 * 1_500_000)))
    cfg = SynthConfig(seed=0, n_chromosomes=n_chrom, chromosome_length=1_500_000, ploidy=4, gzip=True)
    return synthesize(cfg, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic-mb", type=float, default=120.0)
    parser.add_argument("--no-yeast", action="store_true")
    parser.add_argument("--no-synthetic", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per case (best time is reported)")
    parser.add_argument("--cold", action="store_true", help="no warm-up: count one-time import costs too")
    parser.add_argument("--src", action="append", help="measure the dnalm package in this source directory")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    rows = []
    with tempfile.TemporaryDirectory(prefix="dnalm-prepare-bench-") as tmp:
        tmp_path = Path(tmp)
        cases = []
        if not args.no_yeast:
            if not YEAST_FASTA.exists():
                print(f"skipping yeast: {YEAST_FASTA} not found", file=sys.stderr)
            else:
                split = {"strategy": "records", "val": ["BK006947.3"], "test": ["BK006948.2", "BK006949.2"]}
                cases += [("yeast R64", str(YEAST_FASTA), str(YEAST_GFF), split),
                          ("yeast R64, no GFF3", str(YEAST_FASTA), None, split)]
        if not args.no_synthetic:
            t0 = time.perf_counter()
            paths = synthesize_large(args.synthetic_mb, tmp_path / "synth")
            print(f"synthesized {args.synthetic_mb:g} Mb in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            split = {"strategy": "homology", "val_fraction": 0.1, "test_fraction": 0.1}
            cases += [("synthetic 4-ploid", str(paths["fasta"]), str(paths["gff3"]), split),
                      ("synthetic 4-ploid, no GFF3", str(paths["fasta"]), None, split)]
        sources = args.src or [None]
        runs: dict[tuple[int, int], list[dict]] = {}
        for rep in range(args.repeat):
            for i, (label, fasta, gff, split) in enumerate(cases):
                for j, src in enumerate(sources):
                    out = tmp_path / f"o{i}-{j}-{rep}"
                    spec = {"name": "g", "fasta": fasta, "annotation": gff, "split": split, "out": str(out),
                            "tracemalloc": rep == 0, "warm_up": not args.cold}
                    runs.setdefault((i, j), []).append(measure(spec, src))
                    shutil.rmtree(out, ignore_errors=True)
                    print(f"measured {label} ({src or 'installed'}), repetition {rep + 1}", file=sys.stderr)
        for i, (label, *_) in enumerate(cases):
            for j, src in enumerate(sources):
                rows.append((label if len(sources) == 1 else f"{label} [{src}]", best(runs[i, j])))

    print(f"best of {args.repeat} runs (CPU and wall time), largest peak and growth of RSS; "
          + ("cold processes" if args.cold else "after a warm-up on a tiny genome"))
    print()
    print("| genome | Mb | records | longest record (Mb) | wall s | CPU s | Mb/s per core | peak RSS MB "
          "| RSS growth MB | tracemalloc peak MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, r in rows:
        mb = r["bases"] / 1e6
        print(f"| {label} | {mb:.1f} | {r['records']} | {r['longest'] / 1e6:.2f} | {r['wall_s']:.2f} | "
              f"{r['cpu_s']:.2f} | {mb / r['cpu_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['rss_growth_mb']:.0f} | "
              f"{r['traced_peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
