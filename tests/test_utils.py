"""dnalm.utils helpers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from dnalm.utils import json_safe


def test_json_safe_turns_non_finite_and_array_scalars_into_json():
    value = {"a": float("nan"), 2: (np.float32(1.5), np.int64(3), torch.tensor(2.5)), "b": [math.inf, {"c": -1.0}],
             "d": np.float64("-inf"), "e": "text"}
    out = json_safe(value)
    assert out == {"a": None, "2": [1.5, 3, 2.5], "b": [None, {"c": -1.0}], "d": None, "e": "text"}
    assert type(out["2"][1]) is int and type(out["2"][0]) is float
    json.dumps(out, allow_nan=False)  # strict JSON


def test_open_text_reads_gzip_by_content_and_names_bad_paths(tmp_path):
    import gzip

    import pytest

    from dnalm.errors import InputError
    from dnalm.utils import open_text

    (tmp_path / "plain.gff").write_bytes(b"a\r\nb\n")
    (tmp_path / "packed.txt").write_bytes(gzip.compress(b"a\r\nb\n"))  # gzip without a .gz name
    for name in ("plain.gff", "packed.txt"):
        with open_text(tmp_path / name) as f:
            assert f.read() == "a\r\nb\n"
        with open_text(tmp_path / name, newline=None) as f:
            assert f.read() == "a\nb\n"
    with pytest.raises(InputError, match=r"missing\.csv: file not found"):
        open_text(tmp_path / "missing.csv")
    with pytest.raises(InputError, match="is a directory, not a GFF3 file"):
        open_text(tmp_path, what="GFF3 file")


def test_open_text_drops_a_byte_order_mark_and_reports_corrupt_gzip_as_an_os_error(tmp_path):
    """Spreadsheets write a UTF-8 BOM before the header; corrupt deflate data (here a reserved block type)
    is an OSError like the gzip module's other failures, not a zlib.error."""
    import gzip

    import pytest

    from dnalm.utils import open_text

    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfsequence,label\nACGT,1\n")
    (tmp_path / "bom.csv.gz").write_bytes(gzip.compress(b"\xef\xbb\xbfsequence,label\n"))
    for name in ("bom.csv", "bom.csv.gz"):
        with open_text(tmp_path / name) as f:
            assert f.readline() == "sequence,label\n"
    corrupt = gzip.compress(b"sequence,label\n", mtime=0)[:10] + b"\x07" + bytes(16)
    (tmp_path / "corrupt.csv.gz").write_bytes(corrupt)
    with open_text(tmp_path / "corrupt.csv.gz") as f, pytest.raises(OSError, match="invalid block type"):
        f.read()


def test_outputs_that_cannot_be_written_are_input_errors(tmp_path):
    """A file where a directory should be, a name longer than the file system allows, a location that takes no
    new files: one-line InputErrors naming the output, nothing left behind."""
    import pytest

    from dnalm.errors import InputError
    from dnalm.utils import atomic_dir, atomic_file, make_dir

    (tmp_path / "afile").write_text("x")
    cases = [(tmp_path / "afile" / "sub" / "out.tsv", r"cannot write an output here \(Not a directory\)"),
             (tmp_path / ("x" * 300), "cannot write an output here"),
             (Path("/proc") / "dnalm_test_output", "cannot write an output here")]
    for target, message in cases:
        for writer in (atomic_file, atomic_dir):
            with pytest.raises(InputError, match=message) as err, writer(target):
                raise AssertionError("the block ran")
            assert str(target) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match=r"afile/run: cannot create this directory \(Not a directory\)"):
        make_dir(tmp_path / "afile" / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
