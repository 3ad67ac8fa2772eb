"""Build a teacher cache: the teacher runs once, forward only, over exactly the samples a training run reads.

The samples come from the training data pipeline itself: ``build_gpt_datasets`` with the run's data path,
seq_length and seed and ``samples`` as the train dataset's size, walked by ``MicroBatchIterator`` (the run's
consumed-samples arithmetic) at the build's own micro-batch and DP. Any TP x PP x DP: megatron's forward-only
schedule drives the teacher's stages; its last stage returns final hidden states (``output_layer.defer_logits``)
and ``vocab_parallel_sample`` forms logits chunk by chunk from them and the output-weight shard, every TP rank
taking part in the sampling collectives; TP rank 0 of each DP rank's last stage writes that rank's rows.

Draws are reproducible per sample: sample i's uniforms [s, K] come from a generator seeded with (seed, i), so
a cache does not depend on the build's DP or micro-batch (and at another TP differs only by fp32 rounding of
the CDF). The store (store.py) is written segment by segment under temporary names; a killed build
rerun with ``--resume`` checks it is the same build (provenance and layout) and starts at the first incomplete
segment. Progress: tokens/s and time left (tqdm) on rank 0.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from nemo_subnet import config as configs
from nemo_subnet.checkpointing import load_model, read_model_config
from nemo_subnet.data import GPTDataConfig, MicroBatchIterator, build_gpt_datasets, read_metadata, split_path
from nemo_subnet.data.gpt_datasets import split_fingerprint
from nemo_subnet.errors import UserError
from nemo_subnet.kernels import vocab_parallel_sample
from nemo_subnet.models.execution import ExecutionOptions
from nemo_subnet.runtime import compute_device, init_runtime, seeded_generator
from nemo_subnet.teacher_cache import store
from nemo_subnet.teacher_cache.config import TeacherCacheConfig
from nemo_subnet.training.output_layer import defer_logits, output_weight


@dataclass
class CacheResult:
    out: Path
    covered: int
    """Samples the cache holds."""
    built_now: int
    """Samples computed by this invocation (0: it was already complete)."""
    seconds: float
    bytes_per_token: int


def provenance_of(config: TeacherCacheConfig, teacher_cfg) -> store.Provenance:
    """What a cache built with ``config`` records (also what a run's settings are compared against)."""
    metadata = read_metadata(config.data.path)
    return store.Provenance(
        teacher=str(Path(config.teacher).absolute()), teacher_fingerprint=store.checkpoint_fingerprint(config.teacher),
        data=str(Path(config.data.path).absolute()),
        data_fingerprint=split_fingerprint([split_path(config.data.path, metadata, "train")]),
        data_seed=config.data.seed, seq_length=config.data.seq_length, dataset_samples=config.samples,
        vocab_size=teacher_cfg.vocab_size, padded_vocab_size=teacher_cfg.padded_vocab_size, method=config.method,
        k=config.k, temperature=float(config.temperature), sample_seed=config.seed)


def sample_uniforms(seed: int, first: int, count: int, seq_length: int, k: int, device) -> torch.Tensor:
    """[count, s, k] uniforms of samples first .. first + count - 1, each from its own (seed, index) generator."""
    out = torch.empty(count, seq_length, k, device=device)
    for i in range(count):
        digest = hashlib.blake2b(f"{seed}:{first + i}".encode(), digest_size=8).digest()
        generator = seeded_generator(device, int.from_bytes(digest, "little") >> 1)
        torch.rand(seq_length, k, generator=generator, device=device, out=out[i])
    return out


def _check_existing(out: Path, provenance: store.Provenance, layout: store.Layout, resume: bool) -> bool:
    """True when ``out`` already holds this complete cache; a UserError for anything that cannot be resumed."""
    manifest = store.read_record(out, store.MANIFEST_FILE)
    build = manifest or store.read_record(out, store.BUILD_FILE)
    if build is None:
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out} exists and is not a teacher cache: choose another out")
        return False
    old_provenance, old_layout = store.parse_record(build, out)
    differ = store.mismatches(old_provenance, provenance, [f for f in vars(provenance) if f not in ("teacher", "data")])
    differ += [f"layout {name}: the cache has {getattr(old_layout, name)!r}, this build {getattr(layout, name)!r} "
               "(the files' layout depends on it)" for name in vars(layout) if getattr(old_layout, name) != getattr(layout, name)]
    if differ:
        raise UserError(f"{out} holds another teacher cache build: " + "; ".join(differ)
                        + ". Choose another out, or rerun with the settings it was built with")
    if manifest is not None:
        return True
    if not resume:
        done = store.complete_segments(out, layout)
        raise UserError(f"{out} holds a partial build of this cache ({done} of {layout.num_segments} segments): "
                        "pass --resume to finish it")
    return False


def build_teacher_cache(config: TeacherCacheConfig, *, resume: bool = False) -> CacheResult:
    """Build (or finish) the cache described by ``config``; collective under torchrun / srun."""
    config.validate()
    try:
        teacher_cfg = read_model_config(config.teacher)
        teacher_cfg.check_parallel(config.parallel.tp, config.parallel.pp)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(f"teacher: {err}") from None
    if config.method == "topk" and config.k > teacher_cfg.vocab_size:
        raise UserError(f"k {config.k} is larger than the vocabulary {teacher_cfg.vocab_size}")
    data_cfg = GPTDataConfig(data_dir=Path(config.data.path), seq_length=config.data.seq_length, seed=config.data.seed,
                             max_position=teacher_cfg.max_position_embeddings, model_vocab_size=teacher_cfg.vocab_size)
    execution = ExecutionOptions(sequence_parallel=config.parallel.sequence_parallel)
    runtime = init_runtime(tp=config.parallel.tp, pp=config.parallel.pp, seed=config.seed,
                           timeout_minutes=config.parallel.collective_timeout_minutes)
    mbs, dp = config.data.micro_batch_size, runtime.dp
    step = mbs * dp
    datasets = build_gpt_datasets(data_cfg, config.samples)
    covered = -(-config.samples // step) * step
    if covered > len(datasets.train) // step * step:
        raise UserError(f"the train dataset holds {len(datasets.train)} samples, fewer than the {covered} = samples "
                        f"rounded up to whole build steps of micro_batch_size * dp = {step}: choose samples a multiple of {step}")
    layout = store.Layout(micro_batch_size=mbs, dp=dp, segment_microbatches=config.segment_microbatches, covered=covered,
                          id_dtype=store.id_dtype_for(teacher_cfg.padded_vocab_size))
    provenance = provenance_of(config, teacher_cfg)
    out = Path(config.out)
    complete = _check_existing(out, provenance, layout, resume)  # every rank reads the same files ...
    if dist.is_initialized():
        dist.barrier()  # ... before rank 0 writes any
    if complete:
        return CacheResult(out, covered, 0, 0.0, store.bytes_per_token(config.method, config.k, layout.id_dtype))
    if runtime.is_main:
        (out / store.SEGMENTS).mkdir(parents=True, exist_ok=True)
        configs.save(config, out / store.CONFIG_FILE)
        store.write_record(out, store.BUILD_FILE, provenance, layout)
    done = torch.tensor([store.complete_segments(out, layout) if runtime.is_main else 0], device=runtime.device)
    if dist.is_initialized():
        dist.broadcast(done, src=0)
    first_segment = int(done.item())

    _, teacher = load_model(config.teacher, params_dtype=config.parallel.params_dtype(), execution=execution)
    teacher.eval()
    defer_logits(teacher)
    dp_rank = parallel_state.get_data_parallel_rank()
    iterator = MicroBatchIterator(datasets.train, mbs, dp_rank=dp_rank, dp_size=dp,
                                  consumed_samples=first_segment * layout.segment_samples)
    writer = parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0
    tp = parallel_state.get_tensor_model_parallel_world_size()
    sample_args = dict(k=config.k, method=config.method, temperature=config.temperature, vocab_size=teacher_cfg.vocab_size,
                       group=parallel_state.get_tensor_model_parallel_group() if tp > 1 else None)
    progress = None
    if runtime.is_main and config.progress:
        from tqdm import tqdm

        progress = tqdm(total=covered * config.data.seq_length, initial=first_segment * layout.segment_samples
                        * config.data.seq_length, unit="tok", unit_scale=True, dynamic_ncols=True, desc="teacher cache")
    started = time.perf_counter()
    for segment in range(first_segment, layout.num_segments):
        steps = layout.segment_steps(segment)
        batches = [next(iterator) for _ in range(steps)]
        firsts = [segment * layout.segment_samples + j * step + dp_rank * mbs for j in range(steps)]
        results = _teacher_forward(teacher, batches, firsts, config, sample_args, runtime.device)
        if writer:
            ids = np.concatenate([r[0] for r in results]).astype(layout.id_dtype)  # [steps * mbs, s, K]
            probs = np.concatenate([r[1] for r in results]).astype(np.float16) if config.method == "topk" else None
            sums = np.concatenate([store.batch_checksums(b) for b in batches])
            store.write_part(out, segment, dp_rank, ids, probs, sums)
        if progress is not None:
            progress.update(steps * step * config.data.seq_length)
    if progress is not None:
        progress.close()
    seconds = time.perf_counter() - started
    if dist.is_initialized():
        dist.barrier()
    if runtime.is_main:
        if store.complete_segments(out, layout) != layout.num_segments:
            raise RuntimeError(f"{out}: a segment part is missing after the build (a writer failed?)")
        store.write_record(out, store.MANIFEST_FILE, provenance, layout, complete=True,
                           bytes_per_token=store.bytes_per_token(config.method, config.k, layout.id_dtype))
    if dist.is_initialized():
        dist.barrier()
    built = covered - first_segment * layout.segment_samples
    return CacheResult(out, covered, built, seconds, store.bytes_per_token(config.method, config.k, layout.id_dtype))


@torch.no_grad()
def _teacher_forward(teacher, batches, firsts, config: TeacherCacheConfig, sample_args, device):
    """[(ids [b, s, K], probs [b, s, K]) numpy per micro-batch] on the last stage ([] elsewhere)."""
    results = []
    seq = config.data.seq_length
    shard_start = parallel_state.get_tensor_model_parallel_rank()

    def forward_step(data_iterator, model):
        batch, first = next(data_iterator)
        tokens = batch["tokens"].to(device)
        output = model(tokens, batch["position_ids"].to(device), attention_mask=None)

        def collect(hidden):  # [b, s, h]
            weight = output_weight(model)  # [V/tp, h]
            uniforms = None
            if config.method == "sample":
                uniforms = sample_uniforms(config.seed, first, tokens.shape[0], seq, config.k, device)
            ids, probs = vocab_parallel_sample(hidden=hidden, weight=weight, uniforms=uniforms,
                                               vocab_start_index=shard_start * weight.shape[0], **sample_args)
            results.append((ids.cpu().numpy(), probs.cpu().numpy()))
            return hidden.sum() * 0.0, {}

        return output, collect

    get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(list(zip(batches, firsts))), model=[teacher],
        num_microbatches=len(batches), seq_length=seq, micro_batch_size=config.data.micro_batch_size,
        forward_only=True)
    return results
