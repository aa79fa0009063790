"""``dnalm synth out=DIR [key=value ...]``: write a synthetic genome and print a short summary."""

from __future__ import annotations

import json

from omegaconf import DictConfig, OmegaConf

from dnalm.config import to_dataclass
from dnalm.errors import ConfigError
from dnalm.genome.synth import SynthConfig, synthesize

MAX_LISTED_RECORDS = 12


def main(cfg: DictConfig) -> int:
    node = OmegaConf.to_container(cfg, resolve=True)
    out = node.pop("out", None)
    if not out:
        raise ConfigError("synth: 'out' must name an output directory (out=DIR)")
    synth_cfg = to_dataclass(node, SynthConfig, where="synth")
    paths = synthesize(synth_cfg, out)
    summary = json.loads(paths["summary"].read_text())
    records = summary["records"]
    total = summary["total_length"]
    groups = len({r["group"] for r in records})
    gc = sum(r["gc"] * (r["length"] - r["n_bases"]) for r in records) / max(1, total - summary["n_bases"])
    print(f"synth: wrote {len(records)} records in {groups} homology groups to {out}/ "
          f"({', '.join(p.name for p in paths.values())})")
    print(f"  total {total:,} bp, GC {100 * gc:.1f}%, N {100 * summary['n_bases'] / total:.2f}%, "
          f"genes {summary['genes']:,}, repeat bases {summary['repeat_bases']:,} "
          f"({100 * summary['repeat_bases'] / total:.1f}%)")
    width = max(len(r["name"]) for r in records)
    for r in records[:MAX_LISTED_RECORDS]:
        print(f"  {r['name']:<{width}}  {r['length']:>12,} bp  genes {r['genes']:>6,}  "
              f"repeats {100 * r['repeat_bases'] / r['length']:5.1f}%  GC {100 * r['gc']:.1f}%")
    if len(records) > MAX_LISTED_RECORDS:
        print(f"  ... and {len(records) - MAX_LISTED_RECORDS} more records (see {paths['summary']})")
    return 0
