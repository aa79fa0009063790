"""Small shared helpers: atomic outputs, checksums, progress (bars on a terminal, lines in a log file)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_dir(path: str | os.PathLike) -> Path:
    """``mkdir -p path``; a path that cannot be a directory (a file in the way, no permission, a name too long)
    is an InputError naming it."""
    from dnalm.errors import InputError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot create this directory ({exc.strerror or exc})") from None
    return path


def _unwritable(path: Path, exc: OSError) -> Exception:
    from dnalm.errors import InputError

    return InputError(f"{path}: cannot write an output here ({exc.strerror or exc})")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    On any exception the temporary file is removed, so a reader never sees a half-written output.
    A location that cannot be written is an InputError naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _unwritable(path, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; move it to ``path`` when the block succeeds.

    An existing ``path`` is replaced only after the new one is complete (``overwrite=True``).
    On failure the temporary directory is deleted and ``path`` is left as it was. A location that
    cannot be written is an InputError naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise _unwritable(path, exc) from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            if not overwrite:
                raise FileExistsError(path)
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


#: Seconds between progress lines when stderr is not a terminal (environment variable DNALM_PROGRESS_EVERY).
DEFAULT_PROGRESS_EVERY = 30.0


def progress_every() -> float:
    """Seconds between progress lines in a log file: ``$DNALM_PROGRESS_EVERY``, else 30."""
    try:
        return max(0.0, float(os.environ.get("DNALM_PROGRESS_EVERY", DEFAULT_PROGRESS_EVERY)))
    except ValueError:
        return DEFAULT_PROGRESS_EVERY


def format_seconds(seconds: float) -> str:
    """``H:MM:SS`` (``D days, H:MM:SS`` beyond a day)."""
    import datetime

    return str(datetime.timedelta(seconds=round(max(0.0, seconds))))


def track(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
          unit_scale: bool = False, every: float | None = None) -> Iterable[T]:
    """Progress of a long loop on stderr: a tqdm bar with rate and ETA on a terminal; otherwise (a log file)
    one line every ``every`` seconds (default :func:`progress_every`) with count, rate, elapsed time and ETA."""
    import sys

    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=unit_scale, dynamic_ncols=True,
                    leave=False)
    return _ProgressLines(iterable, total, desc, unit, unit_scale, progress_every() if every is None else every)


class _ProgressLines:
    """What :func:`track` returns off a terminal: iterate it, or call ``update(n)`` and ``close()`` as on a tqdm
    bar; a line goes to stderr when ``every`` seconds have passed since the last one (not after the last item,
    where the command's own summary follows)."""

    def __init__(self, iterable: Iterable[T], total: int | None, desc: str, unit: str, unit_scale: bool,
                 every: float):
        import time

        self.iterable, self.total, self.desc, self.unit = iterable, total, desc or "progress", unit
        self.unit_scale, self.every = unit_scale, every
        self.done = 0
        self.start = self.last = time.monotonic()

    def _count(self, n: float) -> str:
        if self.unit_scale and n >= 1000:  # 12.3k, 4.5M; below a thousand the plain count
            from tqdm import tqdm

            return tqdm.format_sizeof(n)
        return f"{int(n):,}"

    def update(self, n: int = 1) -> None:
        import sys
        import time

        self.done += n
        now = time.monotonic()
        if now - self.last < self.every or (self.total is not None and self.done >= self.total):
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        if self.total:
            count = (f"{self._count(self.done)}/{self._count(self.total)} {self.unit} "
                     f"({100 * self.done / self.total:.1f}%)")
        else:
            count = f"{self._count(self.done)} {self.unit}"
        eta = f", ETA {format_seconds((self.total - self.done) / rate)}" if self.total else ""
        print(f"{self.desc}: {count}, {self._count(rate) if self.unit_scale else f'{rate:.3g}'} {self.unit}/s, "
              f"elapsed {format_seconds(now - self.start)}{eta}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass

    def __iter__(self) -> Iterator[T]:
        for item in self.iterable:
            yield item
            self.update(1)


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None (JSON has neither), numpy and 0-d tensor scalars as Python
    numbers, mapping keys as strings and tuples as lists, recursively."""
    if getattr(obj, "ndim", None) == 0 and hasattr(obj, "item"):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


GZIP_MAGIC = b"\x1f\x8b"
CSV_FIELD_LIMIT = 2**31 - 1


def allow_long_csv_fields() -> None:
    """Let the ``csv`` module read fields of any length: its default limit, 131,072 characters, is shorter
    than many sequences. The limit is process-wide; it is only ever raised."""
    import csv

    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))


def open_binary(path: str | os.PathLike, what: str = "file") -> io.BufferedReader:
    """``open(path, "rb")`` whose failures (missing, a directory, unreadable) are one-line InputErrors naming
    the path (``what``: the kind of file expected, for the message)."""
    from dnalm.errors import InputError

    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a {what}") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None


class _GzipReader(gzip.GzipFile):
    """``gzip.GzipFile`` whose corrupt deflate data raises ``gzip.BadGzipFile`` (an OSError, like its other
    failures: a bad header or CRC is an OSError, truncation an EOFError) instead of ``zlib.error``."""

    def read(self, size: int = -1) -> bytes:
        return _inflate(super().read, size)

    def read1(self, size: int = -1) -> bytes:
        return _inflate(super().read1, size)

    def peek(self, n: int) -> bytes:
        return _inflate(super().peek, n)

    def readline(self, size: int | None = -1) -> bytes:
        return _inflate(super().readline, size)


def _inflate(read: Callable[[int | None], bytes], size: int | None) -> bytes:
    try:
        return read(size)
    except zlib.error as exc:
        raise gzip.BadGzipFile(f"corrupt compressed data ({exc})") from None


def open_text(path: str | os.PathLike, what: str = "file", errors: str = "strict",
              newline: str | None = "") -> io.TextIOWrapper:
    """A UTF-8 text stream of ``path``, gunzipped when it starts with the gzip magic bytes (whatever its
    name). A missing, unreadable or directory path is an InputError naming it (``what``: the kind of
    file expected, for the message). ``newline=""`` keeps line endings as they are (what csv needs).
    A byte-order mark at the start (spreadsheets write one) is dropped. Reading truncated or corrupt
    gzip data raises EOFError or OSError, never ``zlib.error``."""
    raw = open_binary(path, what)
    magic = raw.read(2)
    raw.seek(0)
    stream = _GzipReader(fileobj=raw, mode="rb") if magic == GZIP_MAGIC else raw
    return io.TextIOWrapper(stream, encoding="utf-8-sig", errors=errors, newline=newline)  # type: ignore[arg-type]


_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1)", "(2)",
                 "In PyTorch 2.6", "Re-running")


def torch_load_reason(exc: BaseException) -> str:
    """One short line saying why ``torch.load`` refused or could not read a file: the unpickler's reason
    (e.g. "Trying to load unsupported GLOBAL posix.system ...") without PyTorch's surrounding advice, which
    suggests loading the file unsafely."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    kept = [line.split("WeightsUnpickler error:")[-1].strip() for line in lines if not line.startswith(_TORCH_ADVICE)]
    text = " ".join(k for k in kept if k) or (lines[0] if lines else "")
    text = text.split(". ")[0].rstrip(".")
    if not text:
        text = "unexpected end of file (empty or truncated)" if isinstance(exc, EOFError) else type(exc).__name__
    return text
