"""Tokenizers for DNA: character level with HyenaDNA's ids, k-mer, and BPE.

All three share the seven special tokens of HyenaDNA's ``CharacterTokenizer`` (Nguyen et al. 2023,
"HyenaDNA", ``src/dataloaders/datasets/hg38_char_tokenizer.py``) with the same ids, so ``PAD_ID`` is
4 whatever the tokenizer:

======  ======  ======  =======  ======  ===========  ======  ==  ==  ==  ==  ==
[CLS]   [SEP]   [BOS]   [MASK]   [PAD]   [RESERVED]   [UNK]   A   C   G   T   N
0       1       2       3        4       5            6       7   8   9   10  11
======  ======  ======  =======  ======  ===========  ======  ==  ==  ==  ==  ==

``[SEP]`` is the end-of-sequence token. Encoding is vectorised: each input byte goes through a
256-entry lookup table (no Python loop per base).

Character policies (options shared by every tokenizer):

* ``case='upper'`` folds soft-masked lowercase to upper case (:meth:`CharTokenizer.soft_mask`
  returns where it was lowercase); ``case='strict'`` maps lowercase to ``[UNK]`` as HyenaDNA does.
* ``iupac='N'`` reads the IUPAC ambiguity codes ``R Y S W K M B D H V`` and the gap characters
  ``-`` and ``.`` as ``N`` and RNA's ``U`` as ``T``; ``iupac='unk'`` maps all of them to ``[UNK]``
  (HyenaDNA pads short intervals with ``.``, which it encodes as ``[UNK]``).
* ``unknown='raise'`` rejects anything else (digits, whitespace, other punctuation, non-ASCII) and
  empty sequences with an :class:`~dnalm.errors.InputError` naming the first offending position
  and character; ``unknown='unk'`` maps them to ``[UNK]`` (HyenaDNA's behaviour) and allows empty
  sequences.

:meth:`CharTokenizer.hyenadna` gives HyenaDNA's exact behaviour. :func:`bases_to_ids` is the
function the genome pipeline uses on raw FASTA sequence bytes (upper-case folding, IUPAC -> N).

Each tokenizer saves itself beside a checkpoint with ``save(directory)`` and comes back with
:func:`load_tokenizer`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from dnalm.errors import ConfigError, InputError
from dnalm.utils import atomic_file

if TYPE_CHECKING:
    import tokenizers as hf_tokenizers
    import torch

CLS_ID = 0
SEP_ID = 1
BOS_ID = 2
MASK_ID = 3
PAD_ID = 4
RESERVED_ID = 5
UNK_ID = 6
EOS_ID = SEP_ID
A_ID = 7
C_ID = 8
G_ID = 9
T_ID = 10
N_ID = 11

SPECIAL_TOKENS: tuple[str, ...] = ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")
BASES = "ACGTN"
CHAR_VOCAB: tuple[str, ...] = SPECIAL_TOKENS + tuple(BASES)
BASE_IDS: dict[str, int] = {b: A_ID + i for i, b in enumerate(BASES)}
#: Special ids that carry no sequence; ``decode(skip_special_tokens=True)`` drops them.
STRUCTURAL_IDS = (CLS_ID, SEP_ID, BOS_ID, MASK_ID, PAD_ID, RESERVED_ID)

IUPAC_AMBIGUITY = "RYSWKMBDHV"
GAP_CHARS = "-."
FORMAT = "dnalm-tokenizer/1"
CONFIG_FILE = "tokenizer.json"
BPE_SIDE_FILE = "dnalm_tokenizer.json"

_INVALID = 0  # byte 0 in a normalisation table: the character is not allowed
_UNK_CHAR = ord("?")  # normalised stand-in for a character that becomes [UNK]

_CHOICES = {
    "bos_token": ("[BOS]", "[CLS]"),
    "padding_side": ("left", "right"),
    "case": ("upper", "strict"),
    "iupac": ("N", "unk"),
    "unknown": ("raise", "unk"),
}


def _normalizing_table(case: str, iupac: str, unknown: str) -> np.ndarray:
    """Byte -> canonical character code: one of ``ACGTN``, ``?`` (becomes [UNK]) or 0 (invalid).

    Returns a ``(256,)`` uint8 array.
    """
    table = np.full(256, _UNK_CHAR if unknown == "unk" else _INVALID, dtype=np.uint8)
    mapping = {b: b for b in BASES}
    for code in IUPAC_AMBIGUITY + GAP_CHARS:
        mapping[code] = "N" if iupac == "N" else "?"
    mapping["U"] = "T" if iupac == "N" else "?"
    for char, target in mapping.items():
        table[ord(char)] = ord(target)
        if char.isalpha():
            table[ord(char.lower())] = ord(target) if case == "upper" else _UNK_CHAR
    return table


_CHAR_TO_ID = np.full(256, 255, dtype=np.uint8)
for _i, _b in enumerate(BASES):
    _CHAR_TO_ID[ord(_b)] = A_ID + _i
_CHAR_TO_ID[_UNK_CHAR] = UNK_ID

_LOWERCASE_ARRAY = np.zeros(256, dtype=np.uint8)
_LOWERCASE_ARRAY[ord("a"): ord("z") + 1] = 1
_LOWERCASE = _LOWERCASE_ARRAY.tobytes()

_GENOME_IDS = _CHAR_TO_ID[_normalizing_table("upper", "N", "raise")].tobytes()
_ALLOWED = "a DNA sequence holds A C G T N, IUPAC codes, '-' or '.'"

#: id -> id of the complementary base (A<->T, C<->G, N and specials unchanged); ``(16,)`` uint8.
COMPLEMENT_IDS = np.arange(16, dtype=np.uint8)
COMPLEMENT_IDS[[A_ID, C_ID, G_ID, T_ID]] = [T_ID, G_ID, C_ID, A_ID]


def _as_bytes(seq: str | bytes | bytearray | memoryview | np.ndarray, unknown: str, where: str) -> bytes:
    """The sequence as bytes, one per character (non-ASCII characters become ``?`` unless rejected)."""
    if isinstance(seq, str):
        try:
            return seq.encode("ascii")
        except UnicodeEncodeError as exc:
            if unknown == "raise":
                raise InputError(f"{where}: invalid character {seq[exc.start]!r} at position {exc.start} "
                                 f"(0-based); {_ALLOWED}") from None
            return seq.encode("ascii", errors="replace")
    if isinstance(seq, bytes):
        return seq
    if isinstance(seq, (bytearray, memoryview)):
        return bytes(seq)
    if isinstance(seq, np.ndarray):
        if seq.dtype != np.uint8 or seq.ndim != 1:
            raise InputError(f"{where}: expected a 1-D uint8 array of characters, got {seq.dtype} "
                             f"{seq.shape}")
        return seq.tobytes()
    raise InputError(f"{where}: expected str, bytes or a uint8 array, got {type(seq).__name__}")


def _translate(raw: bytes, table: bytes, sentinel: int | None, where: str) -> np.ndarray:
    """Map every byte of ``raw`` through a 256-entry table; ``(L,)`` uint8 (writable).

    Raises InputError at the first byte that maps to ``sentinel`` (a character that is not allowed).
    """
    out = bytearray(raw.translate(table))
    if sentinel is not None:
        pos = out.find(sentinel)
        if pos >= 0:
            char = raw[pos: pos + 1].decode("latin-1")
            raise InputError(f"{where}: invalid character {char!r} at position {pos} (0-based); {_ALLOWED}")
    return np.frombuffer(out, dtype=np.uint8)


def bases_to_ids(raw: str | bytes | np.ndarray, where: str = "sequence") -> tuple[np.ndarray, np.ndarray]:
    """Raw FASTA sequence bytes -> ``(ids, softmask)``, the prepared-dataset encoding.

    Args:
        raw: ``(L,)`` sequence characters without line breaks (str, bytes or uint8 array).
        where: names the sequence in error messages (e.g. ``"genome.fa: record chr1"``).

    Returns:
        ``ids`` ``(L,)`` uint8 with A 7, C 8, G 9, T 10, N 11 (lowercase folded to upper case, IUPAC
        ambiguity codes and gaps ``-``/``.`` -> N, U -> T) and ``softmask`` ``(L,)`` bool, True where
        the source character was lowercase. An empty input gives empty arrays.

    Raises:
        InputError: naming the first character that is not a nucleotide code, with its position.
    """
    codes = _as_bytes(raw, "raise", where)
    ids = _translate(codes, _GENOME_IDS, 255, where)
    return ids, _translate(codes, _LOWERCASE, None, where).view(bool)


_COMPLEMENT_CHARS = str.maketrans("ACGTUNRYSWKMBDHVacgtunryswkmbdhv", "TGCAANYRSWMKVHDBtgcaanyrswmkvhdb")


def reverse_complement(seq: str) -> str:
    """Reverse complement of a DNA string (IUPAC codes complemented, U read as T, case kept)."""
    return seq.translate(_COMPLEMENT_CHARS)[::-1]


def reverse_complement_ids(ids: np.ndarray) -> np.ndarray:
    """Reverse complement of character-level ids ``(..., L)`` (specials keep their id)."""
    return COMPLEMENT_IDS[np.asarray(ids)[..., ::-1]].astype(np.asarray(ids).dtype)


def _to_numpy_ids(ids: Any) -> np.ndarray:
    if hasattr(ids, "detach"):
        ids = ids.detach().cpu().numpy()
    return np.asarray(ids, dtype=np.int64)


def _to_tensor(array: np.ndarray, return_tensors: str | None) -> np.ndarray | torch.Tensor:
    if return_tensors is None or return_tensors == "np":
        return array
    if return_tensors == "pt":
        import torch

        return torch.from_numpy(np.ascontiguousarray(array))
    raise ConfigError(f"return_tensors={return_tensors!r} must be None, 'np' or 'pt'")


def fitted_rows(seqs: Sequence[Any], encode_body: Callable[[Any, str], np.ndarray],
                with_special_tokens: Callable[[np.ndarray], np.ndarray] | None, n_special: int,
                max_length: int | None, truncation: bool) -> list[np.ndarray]:
    """Each of ``seqs`` encoded (``encode_body(seq, where)``), cut to ``max_length`` tokens with its
    ``n_special`` special tokens when ``truncation`` (else a longer row is an InputError), then wrapped by
    ``with_special_tokens`` (None: no specials)."""
    rows = []
    for i, seq in enumerate(seqs):
        body = encode_body(seq, f"sequence {i}")
        if max_length is not None and body.size + n_special > max_length:
            if not truncation:
                raise InputError(f"sequence {i}: {body.size + n_special} tokens exceed max_length={max_length} "
                                 "(enable truncation)")
            body = body[: max(max_length - n_special, 0)]
        rows.append(with_special_tokens(body) if with_special_tokens is not None else body)
    return rows


def padded_batch(rows: Sequence[np.ndarray], pad_id: int, padding_side: str, max_length: int | None = None,
                 padding: bool | str = True, return_tensors: str | None = "pt") -> dict[str, Any]:
    """Pad ``B`` id arrays ``(T_b,)`` with ``pad_id`` on ``padding_side`` into ``input_ids`` and
    ``attention_mask`` ``(B, L)`` int64 (1 on tokens): ``padding`` True/``'longest'`` to the longest row,
    ``'max_length'`` to ``max_length``, False requires rows of equal length."""
    lengths = [len(r) for r in rows]
    longest = max(lengths, default=0)
    if padding is True or padding == "longest":
        width = longest
    elif padding == "max_length":
        if max_length is None:
            raise ConfigError("padding='max_length' needs max_length")
        width = max_length
    elif padding is False:
        if len(set(lengths)) > 1:
            raise InputError(f"sequences have different lengths ({min(lengths)} to {longest} tokens); "
                             "use padding")
        width = longest
    else:
        raise ConfigError(f"padding={padding!r} must be true, false, 'longest' or 'max_length'")
    if longest > width:
        raise InputError(f"a row has {longest} tokens, more than max_length={width}")
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for b, row in enumerate(rows):
        n = len(row)
        if n == 0:
            continue
        cols = slice(width - n, width) if padding_side == "left" else slice(0, n)
        input_ids[b, cols] = row
        mask[b, cols] = 1
    return {"input_ids": _to_tensor(input_ids, return_tensors), "attention_mask": _to_tensor(mask, return_tensors)}


def _options_of(config: Mapping[str, Any], cls: type, allowed: set[str]) -> dict[str, Any]:
    """The options of a saved config (``type`` and ``format`` removed); unknown keys raise."""
    config = dict(config)
    kind = config.pop("type", cls.type)
    config.pop("format", None)
    if kind != cls.type:
        raise ConfigError(f"tokenizer config of type {kind!r} given to {cls.__name__}")
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ConfigError(f"unknown tokenizer option {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    return config


class SavedOptions:
    """Persistence of a dataclass tokenizer whose init fields are its options: :meth:`to_config`, :meth:`save`
    (``tokenizer.json``) and :meth:`from_config`, keyed by the class's ``type``."""

    type: ClassVar[str] = ""

    def to_config(self) -> dict[str, Any]:
        """A JSON-able dict: ``type`` plus every option; :meth:`from_config` reverses it."""
        return {"type": self.type, **{f.name: getattr(self, f.name) for f in fields(self) if f.init}}

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` into ``directory`` (created if needed); returns its path."""
        path = Path(directory) / CONFIG_FILE
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps({"format": FORMAT, **self.to_config()}, indent=2) + "\n")
        return path

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Any:
        """Inverse of :meth:`to_config`; unknown keys raise :class:`ConfigError`."""
        return cls(**_options_of(config, cls, {f.name for f in fields(cls) if f.init}))


@dataclass(frozen=True, kw_only=True)
class _Tokenizer(SavedOptions):
    """Options and the encode/pad/save logic shared by every tokenizer.

    Subclasses implement ``_encode_body(seq, where) -> (T,) int64``, ``_decode_body`` and
    ``vocab_size``.
    """

    add_bos: bool = False
    bos_token: str = "[BOS]"
    add_eos: bool = True
    padding_side: str = "left"
    case: str = "upper"
    iupac: str = "N"
    unknown: str = "raise"

    type: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                options = ", ".join(repr(a) for a in allowed)
                raise ConfigError(f"tokenizer option {name}={value!r} must be one of {options}")
        for name in ("add_bos", "add_eos"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"tokenizer option {name}={getattr(self, name)!r} must be true or false")
        table = _normalizing_table(self.case, self.iupac, self.unknown)
        object.__setattr__(self, "_normalize", table.tobytes())
        object.__setattr__(self, "_char_ids", _CHAR_TO_ID[table].tobytes())

    # -- vocabulary -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def padded_vocab_size(self, multiple: int = 8) -> int:
        """The vocabulary rounded up to a multiple (HyenaDNA pads 12 to 16 for the embedding)."""
        return int(math.ceil(self.vocab_size / multiple) * multiple)

    @property
    def bos_id(self) -> int:
        """The leading token: ``[BOS]`` (2) or ``[CLS]`` (0) as in HyenaDNA's standalone copy."""
        return BOS_ID if self.bos_token == "[BOS]" else CLS_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def mask_id(self) -> int:
        return MASK_ID

    @property
    def alphabet(self):
        """The :class:`~dnalm.models.family.Alphabet` of this vocabulary: the ids of the single-base tokens
        A, C, G, T and N and of the specials (ConfigError when a base has no token of its own, e.g. k-mers)."""
        from dnalm.models.family import Alphabet

        vocab = self.vocab
        missing = [b for b in "ACGT" if b not in vocab]
        if missing:
            raise ConfigError(f"this {self.type} tokenizer has no single-base tokens ({', '.join(missing)} missing); "
                              "per-base scoring and sampling need one token per base")
        return Alphabet(acgt=tuple(vocab[b] for b in "ACGT"), n=vocab.get("N"), pad=self.pad_id, bos=self.bos_id,
                        eos=self.eos_id, mask=self.mask_id, unk=self.unk_id, vocab_size=self.vocab_size)

    @property
    def num_special_tokens(self) -> int:
        """How many special tokens ``encode`` adds around a sequence."""
        return int(self.add_bos) + int(self.add_eos)

    # -- encoding ---------------------------------------------------------------------------
    def _normalized(self, seq: str | bytes | np.ndarray, where: str) -> np.ndarray:
        """``(L,)`` uint8 canonical characters (``ACGTN`` or ``?`` for [UNK])."""
        raw = _as_bytes(seq, self.unknown, where)
        if self.unknown == "raise" and not raw:
            raise InputError(f"{where}: empty sequence")
        return _translate(raw, self._normalize, _INVALID if self.unknown == "raise" else None, where)

    def _encode_body(self, seq: str | bytes | np.ndarray, where: str) -> np.ndarray:
        raise NotImplementedError

    def with_special_tokens(self, ids: np.ndarray) -> np.ndarray:
        """Add the configured ``[BOS]``/``[CLS]`` and ``[SEP]`` around ``(T,)`` ids."""
        parts = []
        if self.add_bos:
            parts.append(np.array([self.bos_id], dtype=np.int64))
        parts.append(np.asarray(ids, dtype=np.int64))
        if self.add_eos:
            parts.append(np.array([EOS_ID], dtype=np.int64))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def encode(self, seq: str | bytes | np.ndarray, add_special_tokens: bool = True,
               return_tensors: str | None = None) -> np.ndarray | torch.Tensor:
        """One sequence -> ids ``(T,)`` int64 (a numpy array, or a tensor with ``return_tensors='pt'``)."""
        ids = self._encode_body(seq, "sequence")
        if add_special_tokens:
            ids = self.with_special_tokens(ids)
        return _to_tensor(ids, return_tensors)

    def encode_batch(self, seqs: Sequence[str | bytes | np.ndarray], max_length: int | None = None,
                     padding: bool | str = True, truncation: bool = True, add_special_tokens: bool = True,
                     return_tensors: str = "pt") -> dict[str, Any]:
        """Encode and pad a batch.

        Args:
            seqs: B sequences.
            max_length: the most tokens per row, special tokens included.
            padding: ``True``/``'longest'`` pads to the longest row, ``'max_length'`` to ``max_length``,
                ``False`` requires rows of equal length.
            truncation: with ``max_length``, keep the first bases so that a row, special tokens
                included, fits (HyenaDNA: ``max_length - 1`` bases + ``[SEP]``); without it a longer
                row raises.

        Returns:
            ``input_ids`` ``(B, L)`` int64 and ``attention_mask`` ``(B, L)`` int64 (1 on tokens, 0 on
            padding), padded with ``[PAD]`` on ``padding_side``.
        """
        rows = fitted_rows(seqs, self._encode_body, self.with_special_tokens if add_special_tokens else None,
                           self.num_special_tokens if add_special_tokens else 0, max_length, truncation)
        return self.pad(rows, max_length=max_length, padding=padding, return_tensors=return_tensors)

    def pad(self, rows: Sequence[np.ndarray], max_length: int | None = None, padding: bool | str = True,
            return_tensors: str = "pt") -> dict[str, Any]:
        """Pad ``B`` id arrays ``(T_b,)`` into ``input_ids`` and ``attention_mask`` ``(B, L)``
        (:func:`padded_batch`)."""
        return padded_batch(rows, PAD_ID, self.padding_side, max_length, padding, return_tensors)

    # -- decoding ---------------------------------------------------------------------------
    def _decode_body(self, ids: np.ndarray) -> str:
        """In-vocabulary ids ``(T,)`` -> bases, structural specials dropped, ``[UNK]`` as N."""
        raise NotImplementedError

    def _token_strings(self) -> np.ndarray:
        raise NotImplementedError

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        """Ids ``(T,)`` -> sequence.

        With ``skip_special_tokens`` the structural specials (``[CLS] [SEP] [BOS] [MASK] [PAD]
        [RESERVED]``) are dropped and ``[UNK]`` is written as ``N`` (one per character it stood
        for), so the result is a DNA string; otherwise every token is written out (``[SEP]``, ...).
        """
        ids = _to_numpy_ids(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            pos = int(np.argmax((ids < 0) | (ids >= self.vocab_size)))
            raise InputError(f"token id {int(ids[pos])} at position {pos} is outside the vocabulary "
                             f"(0-{self.vocab_size - 1})")
        if skip_special_tokens:
            return self._decode_body(ids)
        return "".join(self._token_strings()[ids].tolist())

    def decode_batch(self, ids: Any, skip_special_tokens: bool = True) -> list[str]:
        """Rows of ``(B, L)`` ids -> B strings (padding is dropped when skipping specials)."""
        return [self.decode(row, skip_special_tokens) for row in _to_numpy_ids(ids)]


@dataclass(frozen=True, kw_only=True)
class CharTokenizer(_Tokenizer):
    """One token per base with HyenaDNA's ids (vocabulary 12, padded to 16 in the model).

    ``CharTokenizer.hyenadna()`` reproduces HyenaDNA's tokenizer exactly; the default folds
    soft-masked bases to upper case and IUPAC codes to N, and rejects non-DNA characters.
    """

    type: ClassVar[str] = "char"

    @classmethod
    def hyenadna(cls, standalone: bool = False) -> CharTokenizer:
        """HyenaDNA's tokenizer: case-sensitive, everything but ``ACGTN`` -> ``[UNK]``, ``[SEP]`` appended,
        left padding. ``standalone=True`` also prepends ``[CLS]`` like ``standalone_hyenadna.py``."""
        return cls(add_bos=standalone, bos_token="[CLS]", add_eos=True, padding_side="left", case="strict",
                   iupac="unk", unknown="unk")

    @property
    def vocab_size(self) -> int:
        return len(CHAR_VOCAB)

    @property
    def vocab(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(CHAR_VOCAB)}

    def _encode_body(self, seq: str | bytes | np.ndarray, where: str) -> np.ndarray:
        raw = _as_bytes(seq, self.unknown, where)
        if self.unknown == "raise" and not raw:
            raise InputError(f"{where}: empty sequence")
        ids = _translate(raw, self._char_ids, 255 if self.unknown == "raise" else None, where)
        return ids.astype(np.int64)

    def soft_mask(self, seq: str | bytes | np.ndarray) -> np.ndarray:
        """``(L,)`` bool: True where the character is lowercase (soft-masked repeat)."""
        return _translate(_as_bytes(seq, "unk", "sequence"), _LOWERCASE, None, "sequence").view(bool)

    _DECODE: ClassVar[bytes] = b"??????NACGTN".ljust(256, b"?")

    def _decode_body(self, ids: np.ndarray) -> str:
        structural = bytes(STRUCTURAL_IDS)
        return ids.astype(np.uint8).tobytes().translate(self._DECODE, structural).decode("ascii")

    def _token_strings(self) -> np.ndarray:
        return np.array(CHAR_VOCAB, dtype=object)


@dataclass(frozen=True)
class KmerTokenizer(_Tokenizer):
    """k-mer tokens taken every ``stride`` bases (Ji et al. 2021, DNABERT: overlapping, ``stride=1``;
    Dalla-Torre et al. 2023, Nucleotide Transformer: non-overlapping, ``stride=k``).

    Vocabulary: the seven specials (ids 0-6), then the ``4**k`` k-mers over ``ACGT`` in
    lexicographic order (``AAA..A`` = 7). A k-mer containing N or an ``[UNK]`` character becomes
    ``[UNK]``. A sequence of ``L`` bases gives ``(L - k) // stride + 1`` tokens; trailing bases that do
    not fill a k-mer are dropped (none when ``(L - k) % stride == 0``).
    """

    k: int
    stride: int | None = None

    type: ClassVar[str] = "kmer"
    MAX_K: ClassVar[int] = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.k, int) or not 1 <= self.k <= self.MAX_K:
            raise ConfigError(f"tokenizer option k={self.k!r} must be an integer from 1 to {self.MAX_K}")
        if self.stride is None:
            object.__setattr__(self, "stride", self.k)
        if not isinstance(self.stride, int) or not 1 <= self.stride <= self.k:
            raise ConfigError(f"tokenizer option stride={self.stride!r} must be an integer from 1 to "
                              f"k={self.k}")
        base_code = np.full(256, 4, dtype=np.uint8)
        for i, b in enumerate("ACGT"):
            base_code[ord(b)] = i
        object.__setattr__(self, "_base_code", base_code.tobytes())

    @property
    def vocab_size(self) -> int:
        return len(SPECIAL_TOKENS) + 4**self.k

    def kmer_strings(self) -> np.ndarray:
        """``(4**k,)`` k-mer strings in id order (id = 7 + index)."""
        letters = np.frombuffer(b"ACGT", dtype=np.uint8)
        index = np.arange(4**self.k)
        digits = (index[:, None] // 4 ** np.arange(self.k - 1, -1, -1)) % 4  # (4**k, k)
        return np.array([r.tobytes().decode() for r in letters[digits]], dtype=object)

    @property
    def vocab(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self._token_strings().tolist())}

    def _encode_body(self, seq: str | bytes | np.ndarray, where: str) -> np.ndarray:
        chars = self._normalized(seq, where).tobytes()
        codes = np.frombuffer(chars.translate(self._base_code), dtype=np.uint8)  # (L,) 0-3, 4 = not ACGT
        k, s = self.k, int(self.stride)  # type: ignore[arg-type]
        if self.unknown == "raise" and codes.size < k:
            raise InputError(f"{where}: {codes.size} bases, shorter than k={k}")
        n = (codes.size - k) // s + 1 if codes.size >= k else 0
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        digits = np.minimum(codes, 3).astype(np.int32)
        index = np.zeros(n, dtype=np.int32)  # 4**k <= 4**8 fits
        for j in range(k):
            index *= 4
            index += digits[j: j + (n - 1) * s + 1: s]
        index += len(SPECIAL_TOKENS)
        if b"\x04" in codes.tobytes():
            unknown = np.concatenate([[0], np.cumsum(codes == 4)])
            starts = np.arange(n) * s
            index[unknown[starts + k] - unknown[starts] > 0] = UNK_ID
        return index.astype(np.int64)

    def _decode_body(self, ids: np.ndarray) -> str:
        ids = ids[~np.isin(ids, STRUCTURAL_IDS)]
        if ids.size == 0:
            return ""
        letters = np.frombuffer(b"ACGT", dtype=np.uint8)
        index = np.maximum(ids - len(SPECIAL_TOKENS), 0)
        chars = letters[(index[:, None] // 4 ** np.arange(self.k - 1, -1, -1)) % 4]  # (T, k)
        chars[ids == UNK_ID] = ord("N")
        s = int(self.stride)  # type: ignore[arg-type]
        return (chars[0].tobytes() + chars[1:, self.k - s:].tobytes()).decode("ascii")

    def _token_strings(self) -> np.ndarray:
        return np.concatenate([np.array(SPECIAL_TOKENS, dtype=object), self.kmer_strings()])


@dataclass(frozen=True, eq=False)
class BpeTokenizer(_Tokenizer):
    """Byte-pair encoding over DNA (Zhou et al. 2023, DNABERT-2), a Hugging Face ``tokenizers`` BPE model.

    The seven specials keep their ids 0-6; the character policies run before the BPE model, and a
    character that becomes ``[UNK]`` is never merged. ``save`` writes the Hugging Face
    ``tokenizer.json`` (loadable by ``tokenizers.Tokenizer.from_file``) and the options in
    ``dnalm_tokenizer.json`` beside it. Build one with :meth:`train`.
    """

    hf: hf_tokenizers.Tokenizer = field(repr=False)

    type: ClassVar[str] = "bpe"

    def __post_init__(self) -> None:
        super().__post_init__()
        for i, token in enumerate(SPECIAL_TOKENS):
            if self.hf.token_to_id(token) != i:
                raise InputError(f"BPE tokenizer: special token {token} must have id {i} "
                                 f"(has {self.hf.token_to_id(token)})")
        if self.hf.get_vocab_size() < len(SPECIAL_TOKENS):
            raise InputError("BPE tokenizer: vocabulary smaller than the special tokens")

    @classmethod
    def train(cls, sequences: Iterable[str | bytes | np.ndarray], vocab_size: int, *, min_frequency: int = 2,
              max_token_length: int | None = 16, chunk_length: int = 10_000, show_progress: bool = False,
              **options: Any) -> BpeTokenizer:
        """Learn a BPE vocabulary of ``vocab_size`` tokens from DNA sequences.

        Sequences are normalised with the character policies in ``options`` and cut into pieces of at
        most ``chunk_length`` bases (and at ``[UNK]`` characters); merges never cross a cut.
        """
        from tokenizers import Tokenizer, models, trainers

        if vocab_size < len(SPECIAL_TOKENS) + len(BASES):
            raise ConfigError(f"vocab_size={vocab_size} must be at least {len(SPECIAL_TOKENS) + len(BASES)}")
        probe = CharTokenizer(**options)

        def pieces() -> Iterable[str]:
            for i, seq in enumerate(sequences):
                text = probe._normalized(seq, f"sequence {i}").tobytes().decode("ascii")
                for part in text.split("?"):
                    for start in range(0, len(part), chunk_length):
                        yield part[start: start + chunk_length]

        hf = Tokenizer(models.BPE(unk_token="[UNK]"))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=list(SPECIAL_TOKENS), initial_alphabet=list(BASES),
                                      limit_alphabet=len(BASES), max_token_length=max_token_length,
                                      show_progress=show_progress)
        hf.train_from_iterator(pieces(), trainer)
        return cls(hf=hf, **options)

    @property
    def vocab_size(self) -> int:
        return int(self.hf.get_vocab_size())

    @property
    def vocab(self) -> dict[str, int]:
        return dict(self.hf.get_vocab())

    def _text(self, seq: str | bytes | np.ndarray, where: str) -> str:
        return self._normalized(seq, where).tobytes().decode("ascii")

    def _encode_body(self, seq: str | bytes | np.ndarray, where: str) -> np.ndarray:
        encoding = self.hf.encode(self._text(seq, where), add_special_tokens=False)
        return np.asarray(encoding.ids, dtype=np.int64)

    def _token_strings(self) -> np.ndarray:
        strings = np.empty(self.vocab_size, dtype=object)
        for token, i in self.hf.get_vocab().items():
            strings[i] = token
        return strings

    def _decode_body(self, ids: np.ndarray) -> str:
        strings = self._token_strings()
        strings[UNK_ID] = "N"
        return "".join(strings[ids[~np.isin(ids, STRUCTURAL_IDS)]].tolist())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BpeTokenizer) and self.to_config() == other.to_config()

    __hash__ = None  # type: ignore[assignment]

    def to_config(self) -> dict[str, Any]:
        """Options plus the Hugging Face tokenizer as a JSON object under ``hf``."""
        config = {"type": self.type, **{f.name: getattr(self, f.name) for f in fields(self)
                                        if f.init and f.name != "hf"}}
        config["hf"] = json.loads(self.hf.to_str())
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> BpeTokenizer:
        from tokenizers import Tokenizer

        config = dict(config)
        if "hf" not in config:
            raise ConfigError("BPE tokenizer config needs 'hf' (the Hugging Face tokenizer JSON)")
        try:
            hf = Tokenizer.from_str(json.dumps(config.pop("hf")))
        except Exception as exc:
            raise InputError(f"BPE tokenizer config: not a Hugging Face tokenizer ({exc})") from None
        return cls(hf=hf, **_options_of(config, cls, {f.name for f in fields(_Tokenizer) if f.init}))

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the Hugging Face ``tokenizer.json`` and the options in ``dnalm_tokenizer.json``."""
        directory = Path(directory)
        path = directory / CONFIG_FILE
        with atomic_file(path) as tmp:
            tmp.write_text(self.hf.to_str(pretty=True) + "\n")
        options = {k: v for k, v in self.to_config().items() if k != "hf"}
        with atomic_file(directory / BPE_SIDE_FILE) as tmp:
            tmp.write_text(json.dumps({"format": FORMAT, **options, "hf_file": CONFIG_FILE}, indent=2) + "\n")
        return path


AnyTokenizer = CharTokenizer | KmerTokenizer | BpeTokenizer

_CLASSES: dict[str, type[_Tokenizer]] = {c.type: c for c in (CharTokenizer, KmerTokenizer, BpeTokenizer)}


@dataclass
class TokenizerConfig:
    """The ``tokenizer`` node of a config: ``type`` (char, kmer or bpe) and its options.

    ``k``/``stride`` apply to ``kmer``; ``path`` names a saved BPE tokenizer (file or directory).
    """

    type: str = "char"
    add_bos: bool = False
    bos_token: str = "[BOS]"
    add_eos: bool = True
    padding_side: str = "left"
    case: str = "upper"
    iupac: str = "N"
    unknown: str = "raise"
    k: int = 6
    stride: int | None = None
    path: str | None = None


def build_tokenizer(cfg: TokenizerConfig) -> AnyTokenizer:
    """A tokenizer from a :class:`TokenizerConfig` (BPE is loaded from ``cfg.path``)."""
    options = {f.name: getattr(cfg, f.name) for f in fields(_Tokenizer) if f.init}
    if cfg.type == "char":
        return CharTokenizer(**options)
    if cfg.type == "kmer":
        return KmerTokenizer(k=cfg.k, stride=cfg.stride, **options)
    if cfg.type == "bpe":
        if cfg.path is None:
            raise ConfigError("tokenizer.path must name a trained BPE tokenizer for type 'bpe'")
        loaded = load_tokenizer(cfg.path)
        if not isinstance(loaded, BpeTokenizer):
            raise ConfigError(f"tokenizer.path {cfg.path} holds a {loaded.type} tokenizer, not bpe")
        return BpeTokenizer(hf=loaded.hf, **options)
    raise ConfigError(f"tokenizer.type={cfg.type!r} must be one of 'char', 'kmer', 'bpe'")


def tokenizer_from_config(config: Mapping[str, Any]) -> AnyTokenizer:
    """Inverse of ``tok.to_config()`` for any tokenizer (as stored in a prepared manifest)."""
    kind = config.get("type")
    if kind == "byte":  # Evo 2's byte-level vocabulary lives with its family
        from dnalm.models.stripedhyena import ByteTokenizer

        return ByteTokenizer.from_config(config)  # type: ignore[return-value]
    if kind not in _CLASSES:
        raise ConfigError(f"tokenizer type {kind!r} must be one of {', '.join(map(repr, _CLASSES))}")
    return _CLASSES[kind].from_config(config)  # type: ignore[return-value]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None


def load_tokenizer(path: str | os.PathLike) -> AnyTokenizer:
    """Load the tokenizer saved in a directory (or its ``tokenizer.json``).

    Also reads HyenaDNA's ``tokenizer_config.json`` (hub ``-hf`` repositories), which gives
    :meth:`CharTokenizer.hyenadna`.
    """
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    file = path / CONFIG_FILE if path.is_dir() else path
    side = directory / BPE_SIDE_FILE
    if side.is_file() and file.name == CONFIG_FILE:
        options = _read_json(side)
        if not isinstance(options, dict):
            raise InputError(f"{side}: expected a JSON object")
        if options.get("type") == "dnabert2":
            from dnalm.models.dnabert2 import Dnabert2Tokenizer

            return Dnabert2Tokenizer.load(directory)
        options = {k: v for k, v in options.items() if k not in ("format", "hf_file")}
        if not file.is_file():
            raise InputError(f"{file}: missing (named by {side})")
        options["hf"] = _read_json(file)
        try:
            return BpeTokenizer.from_config(options)
        except ConfigError as exc:
            raise InputError(f"{side}: {exc}") from None
    if not file.is_file():
        hyena = directory / "tokenizer_config.json"
        if path.is_dir() and hyena.is_file():
            return _load_hyenadna_config(hyena)
        raise InputError(f"{file}: no tokenizer found (expected {CONFIG_FILE})")
    data = _read_json(file)
    if isinstance(data, dict) and "char_ords" in data:
        return _load_hyenadna_config(file)
    if _is_dnabert2_hub(data):
        from dnalm.models.dnabert2 import Dnabert2Tokenizer

        return Dnabert2Tokenizer.load(file)
    if not isinstance(data, dict) or "type" not in data:
        hint = f"; a Hugging Face tokenizer needs {BPE_SIDE_FILE} beside it" if "model" in data else ""
        raise InputError(f"{file}: not a dnalm tokenizer (no 'type' field{hint})")
    try:
        return tokenizer_from_config(data)
    except ConfigError as exc:
        raise InputError(f"{file}: {exc}") from None


def _is_dnabert2_hub(data: Any) -> bool:
    """A Hugging Face ``tokenizer.json`` with DNABERT-2's special tokens ([UNK] 0, [CLS] 1, [SEP] 2, [PAD] 3,
    [MASK] 4) and a BPE model."""
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict) or data["model"].get("type") != "BPE":
        return False
    added = {t.get("content"): t.get("id") for t in data.get("added_tokens") or [] if isinstance(t, dict)}
    return all(added.get(tok) == i for i, tok in enumerate(("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")))


def _load_hyenadna_config(file: Path) -> CharTokenizer:
    data = _read_json(file)
    ords = data.get("char_ords") if isinstance(data, dict) else None
    if ords != [ord(c) for c in BASES]:
        raise InputError(f"{file}: HyenaDNA tokenizer with characters {ords!r}; only A C G T N is supported")
    return CharTokenizer.hyenadna()
