"""Tokenizers for data preparation: a Hugging Face tokenizer, a sentencepiece model, or one trained here.

Both kinds sit behind :class:`TextTokenizer` (batched ``encode``, ``decode``, ``vocab_size``, ``eod``,
``save``), so preparation does not care which one it holds. The end-of-document (EOD) token appended
after every document is the tokenizer's EOS token; a tokenizer without one is refused.

Trained tokenizers (``train_sentencepiece``) are sentencepiece BPE models set up for source code and
for an exact Hugging Face twin:

- ``normalization_rule_name="identity"``, ``remove_extra_whitespaces=False``, ``add_dummy_prefix=False``:
  indentation and blank lines survive, and the text the model sees is the text on disk;
- ``byte_fallback=True``: any character outside the vocabulary is encoded as its UTF-8 bytes, never
  as ``<unk>``;
- ``"\\n"`` is a user-defined symbol (sentencepiece trains on newline-free "sentences" otherwise);
- one thread, a fixed seed and our own deterministic sampling: two runs give identical bytes.

The Hugging Face twin (``tokenizer.json``) is a ``tokenizers`` BPE over the same vocabulary whose
merges are ordered by sentencepiece's piece scores, with a ``" " -> "▁"`` normalizer and no
pre-tokenizer, which is exactly how sentencepiece's BPE encodes. ``check_same_encoding`` verifies the
two agree on real text before anything is written. Unigram models were tried and rejected: the
``tokenizers`` Viterbi breaks ties between equal-score segmentations differently from sentencepiece.
"""

from __future__ import annotations

import io
import logging
import math
import os
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import sentencepiece as spm

from nemo_subnet.errors import UserError

logger = logging.getLogger(__name__)

SP_MODEL_FILE = "tokenizer.model"
USER_DEFINED_SYMBOLS = ("\n",)
# 3 specials (<unk>, <s>, </s>) + 256 byte pieces + the user-defined symbols; sentencepiece also
# needs room for every character it keeps, which it checks itself
MIN_TRAINED_VOCAB = 3 + 256 + len(USER_DEFINED_SYMBOLS) + 1
_TRAIN_CHUNK_BYTES = 4096  # sentencepiece skips "sentences" longer than max_sentence_length
# text that tells apart normalizations: NFKC folds the ligature, the full-width letter and the circled
# digit; whitespace collapsing eats the double spaces; a dummy prefix adds a leading "▁"
_PROBE = "x  y\n\tﬁ Ａ ① é\u00a0z  \n"


class TextTokenizer(Protocol):
    kind: str
    vocab_size: int
    eod: int

    def encode(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: list[int]) -> str: ...

    def save(self, directory: Path) -> dict:
        """Write the tokenizer files into ``directory``; return their description for dataset.json."""
        ...


class HFTokenizer:
    """A local Hugging Face tokenizer directory, loaded with ``AutoTokenizer`` (offline), or the tokenizer
    embedded in a GGUF file (rebuilt by transformers, as ``import-hf`` carries it into the checkpoint)."""

    kind = "hf"

    def __init__(self, path: str | Path):
        from transformers import AutoTokenizer

        from nemo_subnet.conversion.gguf_io import is_gguf, load_gguf_tokenizer

        gguf = is_gguf(path) and Path(path).is_file()
        if not gguf and not Path(path).is_dir():
            raise UserError(f"--tokenizer {path} is not a directory or a .gguf file: pass a local Hugging Face "
                            "tokenizer directory or a GGUF model file")
        try:
            self.hf = load_gguf_tokenizer(path) if gguf else AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as err:
            raise UserError(f"could not load a Hugging Face tokenizer from {path}: {' '.join(str(err).split())[:300]}") from err
        self.hf.model_max_length = 1 << 62  # documents are long; silence the "sequence too long" warning
        if self.hf.eos_token_id is None:
            raise UserError(f"tokenizer {path} has no EOS token: it is needed as the end-of-document token")
        self.path = str(path)
        self.vocab_size = len(self.hf)  # includes added tokens: every id the tokenizer can emit
        self.eod = int(self.hf.eos_token_id)

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.hf(texts, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids)

    def save(self, directory: Path) -> dict:
        self.hf.save_pretrained(str(directory))
        return {"kind": self.kind, "source": self.path, "hf_tokenizer": True}


class SentencePieceTokenizer:
    """A sentencepiece model held as its serialized bytes; ``trained`` when made by :func:`train_sentencepiece`."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, *, source: str, trained: bool, num_threads: int = 0):
        self.model_proto = model_proto
        self.source = source
        self.trained = trained
        self.num_threads = num_threads or min(8, os.cpu_count() or 1)
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        if self.sp.eos_id() < 0:
            raise UserError(f"sentencepiece model {source} has no EOS piece: it is needed as the end-of-document token")
        self.vocab_size = self.sp.get_piece_size()
        self.eod = self.sp.eos_id()

    @classmethod
    def load(cls, path: str | Path) -> SentencePieceTokenizer:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"--sentencepiece {path} does not exist: pass a sentencepiece .model file")
        try:
            return cls(path.read_bytes(), source=str(path), trained=False)
        except (RuntimeError, OSError) as err:
            raise UserError(f"{path} is not a sentencepiece model: {err}") from err

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, num_threads=self.num_threads)  # parallel in C++

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)

    def save(self, directory: Path, sample_texts: list[str] | None = None) -> dict:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / SP_MODEL_FILE).write_bytes(self.model_proto)
        info = {"kind": self.kind, "source": self.source, "trained": self.trained, "model_file": SP_MODEL_FILE}
        reason = self._hf_export_blocker()
        if reason is None:
            hf = sentencepiece_to_hf(self)
            reason = check_same_encoding(self, hf, [_PROBE, *(sample_texts or [])])
            if reason is None:
                hf.save_pretrained(str(directory))
        if reason is not None:
            if self.trained:  # our own training settings are made for this export: a failure is a bug
                raise RuntimeError(f"Hugging Face export of the trained tokenizer failed: {reason}")
            logger.warning("no Hugging Face tokenizer written for %s: %s", self.source, reason)
        info["hf_tokenizer"] = reason is None
        return info

    def _hf_export_blocker(self) -> str | None:
        """Why this model cannot have an exact ``tokenizers`` twin, or None when it can."""
        sp = self.sp
        if sp.decode(sp.encode(_PROBE)) != _PROBE:
            return "its normalization changes text (not identity, or whitespace collapsing)"
        if sp.encode_as_pieces("x")[0].startswith("▁"):
            return "it adds a dummy prefix"
        if any(not _is_special(sp, i) and not float(sp.get_score(i)).is_integer() for i in range(sp.get_piece_size())):
            return "it is not a BPE model"
        return None


def train_sentencepiece(texts: Iterable[str], vocab_size: int, *, seed: int, max_bytes: int) -> SentencePieceTokenizer:
    """Train a byte-fallback BPE sentencepiece model on the first ``max_bytes`` of ``texts``."""
    if vocab_size < MIN_TRAINED_VOCAB:
        raise UserError(
            f"--vocab-size {vocab_size} is too small: a byte-fallback tokenizer needs at least {MIN_TRAINED_VOCAB} "
            f"(3 special + 256 byte pieces + newline + characters)"
        )
    if vocab_size > 1 << 20:
        raise UserError(f"--vocab-size {vocab_size} is too large: at most {1 << 20} is allowed")
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_training_chunks(texts, max_bytes),
            model_writer=model,
            vocab_size=vocab_size,
            model_type="bpe",
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            byte_fallback=True,
            allow_whitespace_only_pieces=True,  # runs of indentation become single pieces
            split_digits=True,
            character_coverage=0.9995,  # the rarest characters go to bytes instead of taking vocab slots
            user_defined_symbols=list(USER_DEFINED_SYMBOLS),
            max_sentence_length=2 * _TRAIN_CHUNK_BYTES,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=1,  # determinism over speed: a few MB train in seconds
            minloglevel=2,
        )
    except RuntimeError as err:
        message = " ".join(str(err).split())
        if "Vocabulary size" in message or "vocab_size" in message:
            raise UserError(f"--vocab-size {vocab_size} does not fit this corpus: {message}") from err
        raise UserError(f"sentencepiece training failed: {message}") from err
    return SentencePieceTokenizer(model.getvalue(), source="trained", trained=True)


def _training_chunks(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    """Documents cut at line boundaries into pieces sentencepiece accepts, up to ``max_bytes`` in all."""
    total = 0
    for text in texts:
        chunk, size = [], 0
        for line in text.splitlines(keepends=True):
            line_bytes = len(line.encode("utf-8"))
            if line_bytes > _TRAIN_CHUNK_BYTES:
                line = line[:_TRAIN_CHUNK_BYTES // 4]  # a pathological line: keep a piece for statistics
                line_bytes = len(line.encode("utf-8"))
            if size + line_bytes > _TRAIN_CHUNK_BYTES and chunk:
                yield "".join(chunk)
                chunk, size = [], 0
            chunk.append(line)
            size += line_bytes
            total += line_bytes
            if total >= max_bytes:
                break
        if chunk:
            yield "".join(chunk)
        if total >= max_bytes:
            return


def _is_special(sp: spm.SentencePieceProcessor, i: int) -> bool:
    return sp.is_unknown(i) or sp.is_control(i) or sp.is_byte(i) or sp.is_unused(i)


def _is_user_defined(sp: spm.SentencePieceProcessor, i: int) -> bool:
    # sentencepiece stores user-defined pieces with score +0.0 and numbers BPE merges -0.0, -1.0, ...
    score = sp.get_score(i)
    return not _is_special(sp, i) and score == 0.0 and math.copysign(1.0, score) > 0


def sentencepiece_to_hf(tokenizer: SentencePieceTokenizer):
    """The ``transformers`` fast tokenizer that encodes exactly like a BPE sentencepiece model."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    sp = tokenizer.sp
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    user_defined = [p for i, p in enumerate(pieces) if _is_user_defined(sp, i)]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    mergeable = {p for i, p in enumerate(pieces) if not _is_special(sp, i) and not _is_user_defined(sp, i)}
    # sentencepiece BPE applies the merge whose result has the best score (lowest id) first; listing
    # each piece's splits in id order gives tokenizers the same priorities. Specials never take part,
    # so text such as "</s>" or "<0x41>" is spelled out, as sentencepiece does.
    merges = []
    for piece in pieces:
        if piece in mergeable:
            splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))]
            splits = [s for s in splits if s[0] in mergeable and s[1] in mergeable]
            merges.extend(sorted(splits, key=lambda s: (vocab[s[0]], vocab[s[1]])))

    unk = sp.id_to_piece(sp.unk_id())
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_tokens([AddedToken(p, normalized=False, special=False) for p in user_defined])
    specials = {"unk_token": unk, "eos_token": sp.id_to_piece(sp.eos_id())}
    if sp.bos_id() >= 0:
        specials["bos_token"] = sp.id_to_piece(sp.bos_id())
    if sp.pad_id() >= 0:
        specials["pad_token"] = sp.id_to_piece(sp.pad_id())
    # split_special_tokens: "</s>" written in a document is text, as in sentencepiece, not the EOS id
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, split_special_tokens=True, clean_up_tokenization_spaces=False, **specials
    )


def check_same_encoding(sp_tok: SentencePieceTokenizer, hf_tok, texts: list[str]) -> str | None:
    """None when both tokenizers give the same ids for every text, else a description of the first difference."""
    expected = sp_tok.encode(texts)
    got = hf_tok(texts, add_special_tokens=False)["input_ids"]
    for text, a, b in zip(texts, expected, got):
        if a != b:
            at = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            return f"ids differ at token {at} of text {text[:40]!r}...: sentencepiece {a[at:at + 4]} vs tokenizers {b[at:at + 4]}"
    return None
