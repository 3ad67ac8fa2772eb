"""A teacher cache on disk: what it was built from, where each sample's rows are, and nothing half-written.

Layout of a cache directory::

    CACHE/config.yaml                      the build's TeacherCacheConfig (resume with --config CACHE/config.yaml)
    CACHE/build.json                       provenance + layout, written before the first segment
    CACHE/segments/SSSSSS-dpRRR.ids.npy    [rows, s, K] token ids (uint16 when the padded vocabulary fits, else int32)
    CACHE/segments/SSSSSS-dpRRR.probs.npy  [rows, s, K] float16 teacher masses P_T(id) (method topk only)
    CACHE/segments/SSSSSS-dpRRR.sums.npy   [rows] uint64 checksum of each sample's token ids, written last
    CACHE/manifest.json                    build.json + the samples covered, written when every segment is there

Rows are indexed by the training stream's global sample index (``MicroBatchIterator``'s arithmetic: step j of
G = micro_batch_size * dp samples, DP rank r takes the r-th slice of micro_batch_size). The build walks that
stream with its own micro-batch and DP; a segment is ``segment_microbatches`` such steps, contiguous in the
stream, and every DP rank writes its own slice of it. Every file is written to a temporary name and renamed;
a (segment, rank) part counts once its ``.sums.npy`` exists, a segment once all its DP parts do, and a cache is
complete only with ``manifest.json``. A killed build resumes at the first incomplete segment. Sample i lives in
segment i // (S G), step j = (i mod S G) // G, rank r = (i mod G) // b, row j b + i mod b of that file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nemo_subnet.errors import UserError
from nemo_subnet.files import atomic_write, write_text_atomic

FORMAT_VERSION = 1
BUILD_FILE, MANIFEST_FILE, CONFIG_FILE, SEGMENTS = "build.json", "manifest.json", "config.yaml", "segments"
_HEAD_BYTES = 1 << 16  # bytes hashed at each end of every checkpoint file (identity, not integrity)


@dataclass(frozen=True)
class Provenance:
    """What a cache was built from; a training run reading it must agree on every field it shares."""

    teacher: str
    """The teacher checkpoint's absolute path when built (shown in errors; identity is the fingerprint)."""
    teacher_fingerprint: str
    data: str
    data_fingerprint: str
    """split_fingerprint of the data's train split (its documents' lengths)."""
    data_seed: int
    seq_length: int
    dataset_samples: int
    """The train dataset was built for this many samples (megatron's shuffle depends on it); runs read its order."""
    vocab_size: int
    padded_vocab_size: int
    method: str
    k: int
    temperature: float
    sample_seed: int


@dataclass(frozen=True)
class Layout:
    """How the build walked the stream: decides where a sample's rows are."""

    micro_batch_size: int
    dp: int
    segment_microbatches: int
    covered: int
    """Samples of the stream the complete cache holds (the requested samples rounded up to whole build steps)."""
    id_dtype: str

    @property
    def step_samples(self) -> int:
        return self.micro_batch_size * self.dp

    @property
    def segment_samples(self) -> int:
        return self.segment_microbatches * self.step_samples

    @property
    def num_segments(self) -> int:
        return -(-self.covered // self.segment_samples)

    def segment_steps(self, segment: int) -> int:
        """Build steps (micro-batches per DP rank) in ``segment``: all full but maybe the last."""
        return min(self.segment_microbatches, self.covered // self.step_samples - segment * self.segment_microbatches)

    def locate(self, sample: int) -> tuple[int, int, int]:
        """(segment, DP rank, row in that rank's file) of a global sample index."""
        segment, local = divmod(sample, self.segment_samples)
        step, within = divmod(local, self.step_samples)
        rank, offset = divmod(within, self.micro_batch_size)
        return segment, rank, step * self.micro_batch_size + offset


def id_dtype_for(padded_vocab_size: int) -> str:
    return "uint16" if padded_vocab_size <= 1 << 16 else "int32"


def bytes_per_token(method: str, k: int, id_dtype: str) -> int:
    """Stored bytes per token position: K ids (+ K float16 masses for top-k)."""
    return k * (np.dtype(id_dtype).itemsize + (2 if method == "topk" else 0))


def sample_checksum(tokens: torch.Tensor, labels: torch.Tensor) -> int:
    """64-bit hash of one sample's s + 1 token ids (tokens [s] and the last label)."""
    window = np.concatenate([tokens.cpu().numpy().astype(np.int64), labels[-1:].cpu().numpy().astype(np.int64)])
    return int.from_bytes(hashlib.blake2b(window.tobytes(), digest_size=8).digest(), "little")


def batch_checksums(batch: dict) -> np.ndarray:
    """[b] uint64 checksums of a micro-batch's samples."""
    return np.array([sample_checksum(t, lab) for t, lab in zip(batch["tokens"], batch["labels"])], dtype=np.uint64)


def checkpoint_fingerprint(ckpt_dir: str | Path) -> str:
    """A hash of a checkpoint's files: names, sizes and the first and last 64 KiB of each (cheap at any size)."""
    root = Path(ckpt_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(root)}:{size}".encode())
        with path.open("rb") as f:
            digest.update(f.read(_HEAD_BYTES))
            if size > 2 * _HEAD_BYTES:
                f.seek(size - _HEAD_BYTES)
                digest.update(f.read())
    return digest.hexdigest()[:16]


def mismatches(cache: Provenance, other: Provenance, fields) -> list[str]:
    """'field: cache A, run B' for every field of ``fields`` where the two differ."""
    return [f"{name}: the cache has {getattr(cache, name)!r}, this one {getattr(other, name)!r}"
            for name in fields if getattr(cache, name) != getattr(other, name)]


def part_path(root: Path, segment: int, rank: int, kind: str) -> Path:
    return Path(root) / SEGMENTS / f"{segment:06d}-dp{rank:03d}.{kind}.npy"


def write_part(root: Path, segment: int, rank: int, ids: np.ndarray, probs: np.ndarray | None, sums: np.ndarray) -> None:
    """One DP rank's rows of one segment; the checksums last, so a present ``.sums.npy`` means a complete part."""
    arrays = [("ids", ids)] + ([("probs", probs)] if probs is not None else []) + [("sums", sums)]
    for kind, array in arrays:
        with atomic_write(part_path(root, segment, rank, kind)) as tmp, open(tmp, "wb") as file:
            np.save(file, np.ascontiguousarray(array))


def complete_segments(root: Path, layout: Layout) -> int:
    """How many leading segments have every DP rank's part."""
    for segment in range(layout.num_segments):
        if not all(part_path(root, segment, r, "sums").is_file() for r in range(layout.dp)):
            return segment
    return layout.num_segments


def read_record(root: Path, name: str) -> dict | None:
    path = Path(root) / name
    return json.loads(path.read_text()) if path.is_file() else None


def write_record(root: Path, name: str, provenance: Provenance, layout: Layout, **extra) -> None:
    record = {"format_version": FORMAT_VERSION, "provenance": dataclasses.asdict(provenance),
              "layout": dataclasses.asdict(layout), **extra}
    write_text_atomic(Path(root) / name, json.dumps(record, indent=2) + "\n")


def parse_record(record: dict, where: Path) -> tuple[Provenance, Layout]:
    if record.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{where} has format_version {record.get('format_version')}, this code reads {FORMAT_VERSION}")
    return Provenance(**record["provenance"]), Layout(**record["layout"])


class TeacherCache:
    """A complete cache, opened for reading rows by global sample index (memory-mapped segment files)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        manifest = read_record(self.root, MANIFEST_FILE)
        if manifest is None:
            build = read_record(self.root, BUILD_FILE)
            if build is None:
                raise UserError(f"{self.root} is not a teacher cache (no {MANIFEST_FILE}): build one with "
                                "`nemo-subnet teacher-cache`")
            _, layout = parse_record(build, self.root / BUILD_FILE)
            done = complete_segments(self.root, layout)
            built = min(done * layout.segment_samples, layout.covered)
            raise UserError(f"teacher cache {self.root} is partial: {built} of {layout.covered} samples built "
                            f"({done} of {layout.num_segments} segments); finish it with `nemo-subnet teacher-cache "
                            f"--config {self.root / CONFIG_FILE} --resume`")
        self.provenance, self.layout = parse_record(manifest, self.root / MANIFEST_FILE)
        self._open: dict[tuple[int, int], tuple] = {}

    @property
    def tail(self) -> bool:
        """Top-k caches carry the tail bin (1 - sum of the masses); sampled ones are exact empirical targets."""
        return self.provenance.method == "topk"

    def _part(self, segment: int, rank: int):
        key = (segment, rank)
        if key not in self._open:
            kinds = ("ids", "probs", "sums") if self.tail else ("ids", "sums")
            arrays = {kind: np.load(part_path(self.root, segment, rank, kind), mmap_mode="r") for kind in kinds}
            self._open[key] = (arrays["ids"], arrays.get("probs"), arrays["sums"])
        return self._open[key]

    def rows(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Samples [first, first + count): (ids [count, s, K] int32, probs [count, s, K] float16 or None, sums [count])."""
        if first < 0 or first + count > self.layout.covered:
            raise UserError(f"teacher cache {self.root} covers samples [0, {self.layout.covered}); asked for "
                            f"[{first}, {first + count})")
        ids, probs, sums = [], [], []
        for sample in range(first, first + count):
            segment, rank, row = self.layout.locate(sample)
            part_ids, part_probs, part_sums = self._part(segment, rank)
            ids.append(part_ids[row])
            probs.append(None if part_probs is None else part_probs[row])
            sums.append(part_sums[row])
        stacked = None if self.provenance.method != "topk" else np.stack(probs)
        return np.stack(ids).astype(np.int32), stacked, np.array(sums, dtype=np.uint64)
