"""Tokenizers: HyenaDNA's exact ids against the golden fixture, policies, padding, k-mers, BPE, save/load."""

from __future__ import annotations

import gzip
import itertools
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import shared_file
from dnalm.config import to_dataclass
from dnalm.errors import ConfigError, InputError
from dnalm.tokenizers import (
    A_ID,
    BOS_ID,
    CLS_ID,
    MASK_ID,
    N_ID,
    PAD_ID,
    RESERVED_ID,
    SEP_ID,
    UNK_ID,
    BpeTokenizer,
    CharTokenizer,
    KmerTokenizer,
    TokenizerConfig,
    bases_to_ids,
    build_tokenizer,
    load_tokenizer,
    reverse_complement,
    reverse_complement_ids,
    tokenizer_from_config,
)

HYENA_IDS = {"[CLS]": 0, "[SEP]": 1, "[BOS]": 2, "[MASK]": 3, "[PAD]": 4, "[RESERVED]": 5, "[UNK]": 6,
             "A": 7, "C": 8, "G": 9, "T": 10, "N": 11}
ALL_ASCII = "".join(chr(i) for i in range(128))


def naive_char_id(ch: str, case: str, iupac: str, unknown: str) -> int | None:
    """The policies spelled out per character (None = the tokenizer must raise)."""
    if ch in "ACGTN":
        return HYENA_IDS[ch]
    if ch in "acgtn":
        return HYENA_IDS[ch.upper()] if case == "upper" else UNK_ID
    others = {**{c: "N" for c in "RYSWKMBDHV-."}, "U": "T"}
    if ch in others or (ch.upper() in others and ch.isalpha()):
        if ch.islower() and case == "strict":
            return UNK_ID
        return HYENA_IDS[others[ch.upper()]] if iupac == "N" else UNK_ID
    return None if unknown == "raise" else UNK_ID


# ---------------------------------------------------------------- HyenaDNA ids and the golden fixture
def test_vocabulary_is_hyenadna():
    tok = CharTokenizer()
    assert tok.vocab == HYENA_IDS
    constants = (CLS_ID, SEP_ID, BOS_ID, MASK_ID, PAD_ID, RESERVED_ID, UNK_ID, A_ID, N_ID)
    assert constants == (0, 1, 2, 3, 4, 5, 6, 7, 11)
    assert tok.vocab_size == 12
    assert tok.padded_vocab_size() == 16
    assert tok.padded_vocab_size(multiple=5) == 15


def test_golden_fixture_input_ids(hyena_fixture):
    text = (hyena_fixture / "input.txt").read_text().rstrip("\n")
    expected = torch.load(hyena_fixture / "input_ids.pt", weights_only=True)
    assert expected.shape == (1, 1001)
    for tok in (CharTokenizer.hyenadna(), CharTokenizer(add_eos=True)):
        ids = tok.encode(text, return_tensors="pt")
        assert ids.dtype == torch.int64
        assert torch.equal(ids[None], expected)
        batch = tok.encode_batch([text], max_length=1001)
        assert torch.equal(batch["input_ids"], expected)
        assert batch["attention_mask"].sum() == 1001


def test_hyenadna_truncation_and_standalone(hyena_fixture):
    text = (hyena_fixture / "input.txt").read_text().rstrip("\n")
    expected = torch.load(hyena_fixture / "input_ids.pt", weights_only=True)[0]
    tok = CharTokenizer.hyenadna()
    out = tok.encode_batch([text], max_length=1000)["input_ids"][0]
    assert out.shape == (1000,)
    assert torch.equal(out[:-1], expected[:999]) and out[-1] == SEP_ID
    standalone = CharTokenizer.hyenadna(standalone=True).encode(text)
    assert standalone.shape == (1002,)
    assert standalone[0] == CLS_ID and np.array_equal(standalone[1:], expected.numpy())


def test_hyenadna_policies_everything_unknown_is_unk():
    tok = CharTokenizer.hyenadna()
    assert tok.encode("ACgtn.R[SEP]", add_special_tokens=False).tolist() == [7, 8, 6, 6, 6, 6, 6] + [6] * 5
    assert tok.encode("AC é").tolist() == [7, 8, 6, 6, SEP_ID]
    assert tok.encode("").tolist() == [SEP_ID]


# ---------------------------------------------------------------------------------------- policies
def test_case_upper_folds_and_reports_soft_mask():
    tok = CharTokenizer(add_eos=False)
    assert tok.encode("acGtNn").tolist() == [7, 8, 9, 10, 11, 11]
    assert tok.soft_mask("acGtNn").tolist() == [True, True, False, True, False, True]
    assert tok.decode(tok.encode("acGtNn")) == "ACGTNN"


def test_case_strict_maps_lowercase_to_unk():
    tok = CharTokenizer(add_eos=False, case="strict")
    assert tok.encode("acGtNn").tolist() == [6, 6, 9, 6, 11, 6]
    assert tok.encode("rA", add_special_tokens=False).tolist() == [6, 7]


def test_iupac_policies():
    assert CharTokenizer(add_eos=False).encode("RYSWKMBDHVryU-.u").tolist() == [11] * 12 + [10, 11, 11, 10]
    assert CharTokenizer(add_eos=False, iupac="unk").encode("RYSWKMBDHVU-.").tolist() == [6] * 13


@pytest.mark.parametrize(("seq", "pos", "char"), [
    ("ACG1T", 3, "'1'"), ("AC GT", 2, "' '"), ("ACGT\n", 4, r"'\n'"), ("ACéT", 2, "'é'"), ("A*", 1, "'*'"),
    ("[SEP]", 0, "'['"),
])
def test_unknown_raise_names_position_and_character(seq, pos, char):
    tok = CharTokenizer()
    with pytest.raises(InputError, match=rf"position {pos} .*") as info:
        tok.encode(seq)
    assert char in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match=rf"position {pos}"):
        tok.encode(seq.encode("utf-8") if char != "'é'" else b"AC\xe9T")


def test_unknown_raise_rejects_empty_and_batch_names_the_sequence():
    tok = CharTokenizer()
    with pytest.raises(InputError, match="empty"):
        tok.encode("")
    with pytest.raises(InputError, match="sequence 1: invalid character '5' at position 0"):
        tok.encode_batch(["ACGT", "5"])


def test_unknown_unk_maps_everything_to_unk():
    tok = CharTokenizer(unknown="unk", add_eos=False)
    assert tok.encode("AC1 \té").tolist() == [7, 8, 6, 6, 6, 6]
    assert tok.encode("").tolist() == []


def test_bad_options_raise_config_error():
    for bad in ({"case": "lower"}, {"iupac": "x"}, {"unknown": "ignore"}, {"padding_side": "up"},
                {"bos_token": "[SEP]"}, {"add_eos": "yes"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            CharTokenizer(**bad)
    with pytest.raises(ConfigError, match="k=0"):
        KmerTokenizer(0)
    with pytest.raises(ConfigError, match="stride=4"):
        KmerTokenizer(3, 4)


@pytest.mark.parametrize("case", ["upper", "strict"])
@pytest.mark.parametrize("iupac", ["N", "unk"])
@pytest.mark.parametrize("unknown", ["raise", "unk"])
def test_every_byte_against_per_character_mapping(case, iupac, unknown):
    tok = CharTokenizer(add_eos=False, case=case, iupac=iupac, unknown=unknown)
    for byte in range(256):
        char = chr(byte)
        expected = naive_char_id(char if byte < 128 else "\0", case, iupac, unknown)  # non-ASCII: never DNA
        if expected is None:
            with pytest.raises(InputError, match="position 1 "):
                tok.encode(bytes([65, byte]))
        else:
            assert tok.encode(bytes([65, byte])).tolist() == [A_ID, expected], repr(char)


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(ALL_ASCII), max_size=40),
       case=st.sampled_from(["upper", "strict"]), iupac=st.sampled_from(["N", "unk"]),
       unknown=st.sampled_from(["raise", "unk"]))
def test_vectorised_encode_equals_per_character_mapping(text, case, iupac, unknown):
    tok = CharTokenizer(add_eos=False, case=case, iupac=iupac, unknown=unknown)
    expected = [naive_char_id(c, case, iupac, unknown) for c in text]
    if None in expected or (unknown == "raise" and not text):
        message = f"position {expected.index(None)} " if None in expected else "empty"
        with pytest.raises(InputError, match=message):
            tok.encode(text)
    else:
        assert tok.encode(text).tolist() == expected
        assert tok.encode(np.frombuffer(text.encode(), dtype=np.uint8)).tolist() == expected


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet="ACGTNacgtn", min_size=1, max_size=200))
def test_dna_round_trip(text):
    tok = CharTokenizer(add_bos=True)
    ids = tok.encode(text)
    assert ids[0] == BOS_ID and ids[-1] == SEP_ID and len(ids) == len(text) + 2
    assert tok.decode(ids) == text.upper()
    assert tok.decode(torch.from_numpy(ids)) == text.upper()
    assert tok.soft_mask(text).tolist() == [c.islower() for c in text]


# ------------------------------------------------------------------------------------ batch, padding
def test_padding_both_sides():
    seqs = ["ACG", "T"]
    left = CharTokenizer(padding_side="left").encode_batch(seqs)
    assert left["input_ids"].tolist() == [[7, 8, 9, 1], [4, 4, 10, 1]]
    assert left["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    right = CharTokenizer(padding_side="right", add_bos=True, bos_token="[CLS]").encode_batch(
        seqs, max_length=6, padding="max_length", return_tensors="np")
    assert right["input_ids"].tolist() == [[0, 7, 8, 9, 1, 4], [0, 10, 1, 4, 4, 4]]
    assert right["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]]


def test_truncation_and_padding_options():
    tok = CharTokenizer(padding_side="right")
    out = tok.encode_batch(["ACGTACGT", "AC"], max_length=4)
    assert out["input_ids"].tolist() == [[7, 8, 9, 1], [7, 8, 1, 4]]
    with pytest.raises(InputError, match="sequence 0: 9 tokens exceed max_length=4"):
        tok.encode_batch(["ACGTACGT"], max_length=4, truncation=False)
    with pytest.raises(InputError, match="different lengths"):
        tok.encode_batch(["ACG", "A"], padding=False)
    assert tok.encode_batch(["ACG", "TTT"], padding=False)["input_ids"].shape == (2, 4)
    with pytest.raises(ConfigError, match="max_length"):
        tok.encode_batch(["A"], padding="max_length")
    with pytest.raises(ConfigError, match="return_tensors"):
        tok.encode("A", return_tensors="tf")


@settings(max_examples=30, deadline=None)
@given(seqs=st.lists(st.text(alphabet="ACGTNacgt", min_size=1, max_size=30), min_size=1, max_size=6),
       side=st.sampled_from(["left", "right"]))
def test_batch_equals_one_at_a_time(seqs, side):
    tok = CharTokenizer(padding_side=side, add_bos=True)
    out = tok.encode_batch(seqs)
    ids, mask = out["input_ids"].numpy(), out["attention_mask"].numpy().astype(bool)
    assert ids.shape[1] == max(len(s) for s in seqs) + 2
    for row, row_mask, seq in zip(ids, mask, seqs):
        assert np.array_equal(row[row_mask], tok.encode(seq))
        assert np.all(row[~row_mask] == PAD_ID)
        n = len(seq) + 2
        assert row_mask[-n:].all() if side == "left" else row_mask[:n].all()
    assert tok.decode_batch(out["input_ids"]) == [s.upper() for s in seqs]


def test_decode_specials_and_out_of_vocabulary():
    tok = CharTokenizer()
    ids = [BOS_ID, 7, MASK_ID, UNK_ID, 11, PAD_ID, SEP_ID]
    assert tok.decode(ids) == "ANN"
    assert tok.decode(ids, skip_special_tokens=False) == "[BOS]A[MASK][UNK]N[PAD][SEP]"
    with pytest.raises(InputError, match="token id 13 at position 1"):
        tok.decode([7, 13])


# ----------------------------------------------------------------------------- genome-pipeline helpers
def test_bases_to_ids():
    ids, soft = bases_to_ids(b"ACgtRnN-u")
    assert ids.dtype == np.uint8 and soft.dtype == bool
    assert ids.tolist() == [7, 8, 9, 10, 11, 11, 11, 11, 10]
    assert soft.tolist() == [False, False, True, True, False, True, False, False, True]
    ids[0] = 0  # the result is a writable array
    assert np.array_equal(bases_to_ids(np.frombuffer(b"Tt", dtype=np.uint8))[0], [10, 10])
    assert bases_to_ids(b"")[0].size == 0
    with pytest.raises(InputError, match=r"chr2: invalid character '>' at position 2"):
        bases_to_ids(b"AC>GT", where="chr2")


@settings(max_examples=40, deadline=None)
@given(text=st.text(alphabet="ACGTNRYSWKMBDHVUacgtnryswkmbdhvu-.", max_size=60))
def test_bases_to_ids_equals_per_character_mapping(text):
    ids, soft = bases_to_ids(text)
    assert ids.tolist() == [naive_char_id(c, "upper", "N", "raise") for c in text]
    assert soft.tolist() == [c.islower() for c in text]


def test_bases_to_ids_on_a_real_soft_masked_chromosome():
    path = shared_file("yeast_r64", "GCA_000146045.2_R64_genomic.fna.gz")
    lines = []
    with gzip.open(path, "rb") as handle:
        assert handle.readline().startswith(b">")
        for line in handle:
            if line.startswith(b">"):
                break
            lines.append(line.rstrip())
    raw = b"".join(lines)  # chromosome I, 230 kb
    ids, soft = bases_to_ids(raw)
    assert ids.size == len(raw) > 200_000
    assert int(soft.sum()) == sum(raw.count(c) for c in b"acgtn")
    assert int(soft.sum()) > 0
    for base, base_id in zip(b"ACGT", range(A_ID, A_ID + 4)):
        assert int((ids == base_id).sum()) == raw.count(base) + raw.count(base + 32)
    assert CharTokenizer(add_eos=False).decode(ids) == raw.decode().upper()


def test_reverse_complement_ids():
    ids = CharTokenizer().encode("AACGN")  # ..., [SEP]
    assert reverse_complement_ids(ids).tolist() == [SEP_ID, 11, 8, 9, 10, 10]
    batch = np.array([[7, 8], [9, 10]], dtype=np.uint8)
    assert reverse_complement_ids(batch).tolist() == [[9, 10], [7, 8]]
    assert reverse_complement_ids(batch).dtype == np.uint8


def test_reverse_complement_string_agrees_with_ids():
    assert reverse_complement("AcgTNryU") == "AryNAcgT"  # IUPAC codes complemented, case kept, U as T
    rng = np.random.default_rng(0)
    tok = CharTokenizer(add_eos=False)
    for n in (1, 7, 100):
        seq = "".join(rng.choice(list("ACGTN"), n))
        assert tok.encode(reverse_complement(seq)).tolist() == reverse_complement_ids(tok.encode(seq)).tolist()


# ------------------------------------------------------------------------------------------ k-mers
def test_kmer_hand_values():
    tok = KmerTokenizer(2, add_eos=False)
    assert tok.stride == 2
    assert tok.vocab_size == 7 + 16
    assert tok.encode("ACGT").tolist() == [7 + 1, 7 + 2 * 4 + 3]
    assert tok.encode("ACGTNA").tolist() == [8, 18, UNK_ID]
    assert tok.encode("ACG").tolist() == [8]  # the trailing base does not fill a k-mer
    assert KmerTokenizer(2, 1, add_eos=False).encode("ACG").tolist() == [8, 7 + 1 * 4 + 2]
    assert KmerTokenizer(2, 1, add_eos=False).encode("ACnG").tolist() == [8, UNK_ID, UNK_ID]
    with pytest.raises(InputError, match="shorter than k=2"):
        tok.encode("A")
    assert KmerTokenizer(2, unknown="unk").encode("A").tolist() == [SEP_ID]


def test_kmer_vocabulary_is_lexicographic():
    tok = KmerTokenizer(3)
    expected = ["".join(p) for p in itertools.product("ACGT", repeat=3)]
    assert tok.kmer_strings().tolist() == expected
    vocab = tok.vocab
    assert [vocab[kmer] for kmer in expected] == list(range(7, 7 + 64))
    assert vocab["[PAD]"] == PAD_ID
    assert tok.encode("".join(expected), add_special_tokens=False).tolist() == list(range(7, 71))
    assert tok.padded_vocab_size() == 72


@settings(max_examples=60, deadline=None)
@given(data=st.data(), k=st.integers(1, 6))
def test_kmer_counts_and_round_trip(data, k):
    stride = data.draw(st.integers(1, k))
    text = data.draw(st.text(alphabet="ACGTacgt", min_size=k, max_size=80))
    tok = KmerTokenizer(k, stride, add_bos=True)
    ids = tok.encode(text)
    assert len(ids) == (len(text) - k) // stride + 1 + 2
    covered = k + ((len(text) - k) // stride) * stride
    assert tok.decode(ids) == text[:covered].upper()
    starts = range(0, len(text) - k + 1, stride)
    assert ids[1:-1].tolist() == [tok.vocab[text[i: i + k].upper()] for i in starts]


def test_kmer_decode_writes_unknown_kmers_as_n():
    tok = KmerTokenizer(3)
    assert tok.decode(tok.encode("ACGTNAGGG")) == "ACGNNNGGG"
    assert tok.decode(tok.encode("ACG"), skip_special_tokens=False) == "ACG[SEP]"


# --------------------------------------------------------------------------------------------- BPE
@pytest.fixture(scope="module")
def bpe() -> BpeTokenizer:
    rng = np.random.default_rng(0)
    motifs = ["TATAAA", "CCAAT", "GGGCGG"]
    seqs = ["".join(rng.choice(motifs + list("ACGT"), size=200)) for _ in range(20)]
    return BpeTokenizer.train(seqs, vocab_size=40, add_eos=True)


def test_bpe_trains_and_merges(bpe):
    assert 12 < bpe.vocab_size <= 40
    assert [bpe.vocab[t] for t in HYENA_IDS if t.startswith("[")] == list(range(7))
    ids = bpe.encode("TATAAATATAAACCAATGGGCGG")
    assert ids[-1] == SEP_ID
    assert len(ids) - 1 < 23  # merges shorten the sequence
    assert bpe.decode(ids) == "TATAAATATAAACCAATGGGCGG"
    assert bpe.padded_vocab_size() % 8 == 0


@settings(max_examples=30, deadline=None)
@given(text=st.text(alphabet="ACGTNacgt", min_size=1, max_size=120))
def test_bpe_round_trip(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text.upper()


def test_bpe_policies_and_batch(bpe):
    with pytest.raises(InputError, match="position 2"):
        bpe.encode("AC1G")
    lenient = BpeTokenizer(bpe.hf, unknown="unk", add_eos=False)
    ids = lenient.encode("TATAAA1G")
    assert ids.tolist() == bpe.encode("TATAAA", add_special_tokens=False).tolist() + [UNK_ID, bpe.vocab["G"]]
    batch = bpe.encode_batch(["TATAAA", "ACGTACGTAC"], padding=True)
    for row, mask, seq in zip(batch["input_ids"], batch["attention_mask"], ["TATAAA", "ACGTACGTAC"]):
        assert row[mask.bool()].tolist() == bpe.encode(seq).tolist()


def test_bpe_save_load(bpe, tmp_path):
    from tokenizers import Tokenizer

    path = bpe.save(tmp_path / "ckpt")
    assert path.name == "tokenizer.json"
    hf = Tokenizer.from_file(str(path))  # plain Hugging Face JSON
    assert hf.get_vocab() == bpe.hf.get_vocab()
    for where in (tmp_path / "ckpt", path):
        loaded = load_tokenizer(where)
        assert isinstance(loaded, BpeTokenizer) and loaded == bpe
        assert loaded.encode("TATAAACCAAT").tolist() == bpe.encode("TATAAACCAAT").tolist()
    assert tokenizer_from_config(json.loads(json.dumps(bpe.to_config()))) == bpe
    (tmp_path / "ckpt" / "dnalm_tokenizer.json").unlink()
    with pytest.raises(InputError, match="Hugging Face tokenizer needs dnalm_tokenizer.json"):
        load_tokenizer(tmp_path / "ckpt")


# ----------------------------------------------------------------------------------------- save/load
@pytest.mark.parametrize("tok", [
    CharTokenizer(),
    CharTokenizer(add_bos=True, bos_token="[CLS]", padding_side="right", case="strict", iupac="unk",
                  unknown="unk"),
    KmerTokenizer(4, 1, add_eos=False),
    KmerTokenizer(3),
])
def test_save_load_round_trip(tok, tmp_path):
    path = tok.save(tmp_path)
    data = json.loads(path.read_text())
    assert data["type"] == tok.type and data["format"] == "dnalm-tokenizer/1"
    for where in (tmp_path, path):
        loaded = load_tokenizer(where)
        assert type(loaded) is type(tok) and loaded == tok
    assert type(tok).from_config(tok.to_config()) == tok
    assert tokenizer_from_config(tok.to_config()) == tok


def test_load_errors(tmp_path):
    with pytest.raises(InputError, match="no tokenizer found"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"type": "char",\n "case": }')
    with pytest.raises(InputError, match=r"tokenizer.json: line 2: not valid JSON"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"type": "char", "colour": "red"}')
    with pytest.raises(InputError, match="unknown tokenizer option 'colour'"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"type": "word"}')
    with pytest.raises(InputError, match="tokenizer type 'word'"):
        load_tokenizer(tmp_path)


def test_load_hyenadna_tokenizer_config(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"char_ords": [65, 67, 71, 84, 78],
                                                                "model_max_length": 1026}))
    assert load_tokenizer(tmp_path) == CharTokenizer.hyenadna()
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"char_ords": [65, 67]}))
    with pytest.raises(InputError, match="only A C G T N"):
        load_tokenizer(tmp_path)


def test_tokenizer_config_builds_each_type(bpe, tmp_path):
    char = build_tokenizer(to_dataclass({"case": "strict"}, TokenizerConfig, where="tokenizer"))
    assert char == CharTokenizer(case="strict")
    node = {"type": "kmer", "k": 3, "stride": 1}
    kmer = build_tokenizer(to_dataclass(node, TokenizerConfig, where="tokenizer"))
    assert kmer == KmerTokenizer(3, 1)
    bpe.save(tmp_path)
    loaded = build_tokenizer(TokenizerConfig(type="bpe", path=str(tmp_path), add_eos=False))
    assert isinstance(loaded, BpeTokenizer) and not loaded.add_eos and loaded.vocab == bpe.vocab
    with pytest.raises(ConfigError, match="tokenizer.path"):
        build_tokenizer(TokenizerConfig(type="bpe"))
    with pytest.raises(ConfigError, match="tokenizer.type='word'"):
        build_tokenizer(TokenizerConfig(type="word"))
    with pytest.raises(ConfigError, match="unknown config key 'tokenizer.colour'"):
        to_dataclass({"colour": 1}, TokenizerConfig, where="tokenizer")
