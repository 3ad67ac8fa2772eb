"""The training loop, on megatron-core's own primitives.

One step = ``num_microbatches = global_batch / (micro_batch * dp)`` micro-batches through megatron's
forward/backward schedule (1F1B for PP > 1, no-pipelining otherwise), grads reduced by megatron's
DistributedDataParallel (``finalize_model_grads``), then the (distributed) megatron optimizer steps with
grad-norm clipping, and ``OptimizerParamScheduler`` sets the LR (linear warmup, cosine/linear decay).
With a teacher, its forward runs inside each micro-batch, on the same pipeline stages (see teacher.py); from a
teacher cache (``distill.teacher_source: cache``) none exists and each micro-batch carries its cached rows.

Step ``k`` (1-based) uses the LR of scheduler step ``k``; the loss logged for step ``k`` is the mean over
its micro-batches and data-parallel ranks, before the update. A step whose loss or gradients are not finite
on any rank is skipped (weights, optimizer state and LR schedule untouched; the data is consumed), logged
(``skipped``) and counted; more than ``optimizer.max_skipped_steps`` in a row stop the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func

from nemo_subnet.checkpointing import load_model, read_model_config
from nemo_subnet.errors import UserError
from nemo_subnet.data import GPTDataConfig, MicroBatchIterator, build_gpt_datasets, hf_tokenizer_dir, read_metadata, validate_data
from nemo_subnet.models import ModelConfig, build_gpt_model
from nemo_subnet.runtime import compute_device, init_runtime
from nemo_subnet.teacher_cache.training import CachedTeacherIterator, cached_teacher, open_for_training
from nemo_subnet.training import checkpoint as ckpt
from nemo_subnet.training.config import CONFIG_FILE, TrainConfig
from nemo_subnet.training.distill import LMOutput, describe_fused_output, fused_output_enabled, lm_loss, teacher_topk
from nemo_subnet.training.output_layer import defer_logits, output_weight
from nemo_subnet.training.teacher import StudentWithTeacher
from nemo_subnet.models.counting import forward_flops_per_token
from nemo_subnet.training.metrics import MetricsLogger, peak_flops


class TrainingError(RuntimeError):
    """The run cannot continue (e.g. a non-finite loss); the newest checkpoint is the last good state."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    tokens: int
    status: Literal["completed", "preempted"]
    last_checkpoint: Path | None
    final_metrics: dict
    """The last train record merged with the last validation record."""


class _Preemption:
    """SIGTERM (SLURM preemption, ``kill``) sets a flag; the loop checkpoints and stops after the step."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def agreed(self) -> bool:
        """True on every rank when any rank received SIGTERM (one 4-byte all-reduce per step, on the device:
        the default group is NCCL on GPU)."""
        flag = torch.tensor([1.0 if self.requested else 0.0], device=compute_device())
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def _check_inputs(config: TrainConfig) -> tuple[ModelConfig, ModelConfig | None, dict]:
    """Read model / teacher / data descriptions and check they fit, before anything heavy is built."""
    try:
        if config.init.from_checkpoint is not None:
            student_cfg = read_model_config(config.init.from_checkpoint)
        else:
            student_cfg = ModelConfig.load(config.init.random)
        teacher_cfg = read_model_config(config.distill.teacher) if config.distill.teacher else None
        metadata = read_metadata(config.data.path)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from None
    if teacher_cfg is not None and (teacher_cfg.vocab_size, teacher_cfg.padded_vocab_size) != (
            student_cfg.vocab_size, student_cfg.padded_vocab_size):
        raise UserError(
            f"vocab mismatch: teacher vocab_size {teacher_cfg.vocab_size} (padded {teacher_cfg.padded_vocab_size}) != "
            f"student vocab_size {student_cfg.vocab_size} (padded {student_cfg.padded_vocab_size}); "
            "distillation needs the same tokenizer")
    built_teacher = teacher_cfg if config.distill.teacher_source == "online" else None  # a cache builds none
    for name, cfg in (("student", student_cfg), ("teacher", built_teacher)):
        if cfg is None:
            continue
        try:
            cfg.check_parallel(config.parallel.tp, config.parallel.pp)
            if name == "student":
                config.execution.check(config.parallel.tp, cfg.num_layers // config.parallel.pp, model=cfg)
        except ValueError as err:
            raise UserError(f"{name}: {err}") from None
        if cfg.max_position_embeddings < config.data.seq_length:
            raise UserError(f"{name}: seq_length {config.data.seq_length} is longer than the position limit "
                            f"{cfg.max_position_embeddings}")
    validate_data(_data_config(config, student_cfg), metadata)
    # more embedding rows than tokenizer tokens is normal (Pythia 50304 vs 50277): the extra rows are never
    # a label; only token ids the model has no row for are an error
    if metadata["vocab_size"] > student_cfg.vocab_size:
        raise UserError(f"vocab mismatch: the data's tokenizer has {metadata['vocab_size']} tokens, more than the "
                        f"student model's {student_cfg.vocab_size} embedding rows")
    return student_cfg, teacher_cfg, metadata


def _data_config(config: TrainConfig, model_cfg: ModelConfig) -> GPTDataConfig:
    return GPTDataConfig(data_dir=Path(config.data.path), seq_length=config.data.seq_length, seed=config.data.seed,
                         eval_seed=config.data.eval_seed, max_position=model_cfg.max_position_embeddings, model_vocab_size=model_cfg.vocab_size,
                         eod_mask_loss=config.data.eod_mask_loss)


def _build_student(config: TrainConfig, student_cfg: ModelConfig, dtype: torch.dtype):
    if config.init.from_checkpoint is not None:
        _, model = load_model(config.init.from_checkpoint, params_dtype=dtype, execution=config.execution)
    else:
        model = build_gpt_model(student_cfg, params_dtype=dtype, execution=config.execution)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=config.parallel.overlap_grad_reduce,
        overlap_param_gather=config.parallel.overlap_param_gather,
        use_distributed_optimizer=config.optimizer.use_distributed_optimizer)
    ddp = DistributedDataParallel(config=model.config, ddp_config=ddp_config, module=model)
    opt = config.optimizer
    optimizer = get_megatron_optimizer(
        MegatronOptimizerConfig(
            optimizer="adam", lr=opt.lr, min_lr=opt.min_lr, weight_decay=opt.weight_decay, adam_beta1=opt.adam_beta1,
            adam_beta2=opt.adam_beta2, adam_eps=opt.adam_eps, clip_grad=opt.clip_grad,
            bf16=dtype == torch.bfloat16, params_dtype=dtype, use_distributed_optimizer=opt.use_distributed_optimizer),
        [ddp])
    sched = config.schedule
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=opt.lr, min_lr=opt.min_lr, lr_warmup_steps=sched.warmup_steps,
        lr_decay_steps=sched.decay_steps or sched.train_steps, lr_decay_style=sched.decay_style,
        start_wd=opt.weight_decay, end_wd=opt.weight_decay, wd_incr_steps=sched.train_steps, wd_incr_style="constant")
    # megatron's schedules find these hooks on the model config
    model.config.no_sync_func = ddp.no_sync
    model.config.finalize_model_grads_func = finalize_model_grads
    model.config.grad_scale_func = optimizer.scale_loss
    return model, ddp, optimizer, scheduler


def _to_device(batch: dict, device: torch.device) -> dict:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


class _Step:
    """Runs megatron's schedule over a list of micro-batches and reduces the logged losses.

    With a teacher, training steps run ``StudentWithTeacher`` (teacher.py): the teacher's forward happens
    inside each micro-batch, next to the student's, on the same pipeline stages. With the fused output on
    (``distill.fused_output``), the last stages of both return final hidden states and the loss forms the
    logits chunk by chunk from them and the output-weight shards (output_layer.py, distill.py)."""

    def __init__(self, config: TrainConfig, model_cfg: ModelConfig, ddp, pair: StudentWithTeacher | None, cache=None):
        self.config = config
        self.vocab_size = model_cfg.vocab_size
        self.ddp, self.pair, self.cache = ddp, pair, cache
        self.schedule = get_forward_backward_func()
        local_vocab = model_cfg.padded_vocab_size // parallel_state.get_tensor_model_parallel_world_size()
        n_tokens = config.data.micro_batch_size * config.data.seq_length
        setting = "on" if cache is not None else config.distill.fused_output  # the cache's loss is fused only
        self.fused = fused_output_enabled(setting, n_tokens, local_vocab)
        self.fused_output_line = describe_fused_output(setting, n_tokens, local_vocab)
        if cache is not None:
            self.fused_output_line += " (set by distill.teacher_source: cache, whose loss is fused only)"
        if self.fused:
            defer_logits(ddp)
            if pair is not None:
                defer_logits(pair.teacher)

    def _output(self, tensor: torch.Tensor, model) -> LMOutput:
        """Logits [b, s, v_local], or final hidden states [b, s, h] + the weight shard that forward deferred."""
        return LMOutput(tensor, output_weight(model) if self.fused else None)

    def _forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        output = model(batch["tokens"], batch["position_ids"], attention_mask=batch.get("attention_mask"))
        teacher = None
        if model is self.pair and parallel_state.is_pipeline_last_stage():
            teacher = self._output(model.take_teacher_output(), model.teacher)  # [b, s, v_local] or [b, s, h_t]
            if self.config.distill.top_k is not None:
                teacher = teacher_topk(teacher, self.config.distill.top_k, self.vocab_size)  # [b, s, k] x 2
        elif "teacher_ids" in batch and parallel_state.is_pipeline_last_stage():
            teacher = cached_teacher(batch, self.cache)  # [b, s, K] from the teacher cache
        weights = self.config.loss_weights if teacher is not None else (1.0, 0.0)

        def loss_func(student):  # [b, s, v_local], or [b, s, h] when fused
            return lm_loss(self._output(student, self.ddp), batch["labels"], batch["loss_mask"], self.vocab_size,
                           weights, self.config.distill, teacher)

        return output, loss_func

    def run(self, batches: list[dict], *, forward_only: bool, with_teacher: bool) -> dict[str, float]:
        data = self.config.data
        model, extra = self.ddp, {}
        if with_teacher and self.pair is not None:
            model = self.pair
            if parallel_state.get_pipeline_model_parallel_world_size() > 1:
                extra["adjust_tensor_shapes_fn"] = self.pair.adjust_tensor_shapes
        outputs = self.schedule(
            forward_step_func=self._forward_step, data_iterator=iter(batches), model=[model],
            num_microbatches=len(batches), seq_length=data.seq_length, micro_batch_size=data.micro_batch_size,
            forward_only=forward_only, **extra)
        return _reduce_logs(outputs, len(batches))


def _grads_finite(ddp) -> bool:
    """Every rank's reduced gradients finite (one scalar all-reduce over the world: all ranks agree).

    The sum of a buffer is non-finite iff an element is (fp32 buffers: a finite sum cannot overflow here),
    so no buffer-sized temporary is needed."""
    bad = torch.zeros((), dtype=torch.float32, device=compute_device())
    for buffer in [*ddp.buffers, *ddp.expert_parallel_buffers]:
        bad += (~torch.isfinite(buffer.grad_data.sum())).float()
    if dist.is_initialized():
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return bad.item() == 0.0


@dataclass
class _Skips:
    """Steps skipped for a non-finite loss or gradient; too many in a row stops the run."""

    limit: int
    total: int = 0
    consecutive: int = 0

    def record(self, step: int, logs: dict, run_dir: Path) -> None:
        self.total += 1
        self.consecutive += 1
        if self.consecutive > self.limit:
            first = step - self.consecutive + 1
            raise TrainingError(
                f"non-finite loss or gradients at step {first}" + (f" and the {self.consecutive - 1} steps after it"
                                                                 if self.consecutive > 1 else "")
                + f" ({logs}); those updates were skipped (optimizer.max_skipped_steps={self.limit}). Last good "
                f"checkpoint: {ckpt.latest_checkpoint(run_dir) or 'none'}. Lower optimizer.lr or check the data.")


def _reduce_logs(outputs: list[dict], n: int) -> dict[str, float]:
    """Mean of each logged value over micro-batches and data-parallel ranks, known on every rank."""
    keys = ("loss", "ce", "kd")
    zero = torch.zeros((), dtype=torch.float64, device=compute_device())
    values = torch.zeros(len(keys) + 1, dtype=torch.float64, device=zero.device)
    if parallel_state.is_pipeline_last_stage():
        # summed on the device; the one host sync of the step is the .cpu() below
        values = torch.stack([sum((out[key].double() for out in outputs if key in out), zero) / n for key in keys]
                             + [zero + (1.0 if "kd" in outputs[0] else 0.0)])
    if dist.is_initialized():
        dist.all_reduce(values, group=parallel_state.get_pipeline_model_parallel_group())
        dist.all_reduce(values, group=parallel_state.get_data_parallel_group())
        values = values / parallel_state.get_data_parallel_world_size()
    values = values.cpu()
    logs = {"loss": values[0].item(), "ce": values[1].item()}
    if values[-1] > 0:
        logs["kd"] = values[2].item()
    return logs


def train(config: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Train (and distill) a student as configured; collective under torchrun / srun. See the module docstring."""
    config.validate()
    student_cfg, teacher_cfg, metadata = _check_inputs(config)
    cache = open_for_training(config, student_cfg) if config.distill.teacher_source == "cache" else None
    runtime = init_runtime(tp=config.parallel.tp, pp=config.parallel.pp, seed=config.seed,
                           timeout_minutes=config.parallel.collective_timeout_minutes)
    if config.global_batch_size_error(runtime.dp):
        raise UserError(config.global_batch_size_error(runtime.dp))
    run_dir = Path(config.run_dir)
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None and not resume:
        raise UserError(f"{run_dir} already has checkpoints ({latest.name}): pass --resume or choose another run_dir")
    if runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / CONFIG_FILE)

    dtype = config.parallel.params_dtype()
    data = config.data
    num_microbatches = data.global_batch_size // (data.micro_batch_size * runtime.dp)
    model, ddp, optimizer, scheduler = _build_student(config, student_cfg, dtype)
    pair = None
    if teacher_cfg is not None and cache is None:
        # no recompute (no backward), but the student's sequence split: their hidden states travel together
        _, teacher_model = load_model(config.distill.teacher, params_dtype=dtype, execution=dataclasses.replace(
            config.execution, recompute="none"))
        pair = StudentWithTeacher(ddp, teacher_model, student_cfg.hidden_size, teacher_cfg.hidden_size)

    if config.logging.eval_iters % runtime.dp:
        raise UserError(f"logging.eval_iters {config.logging.eval_iters} is not a multiple of data_parallel {runtime.dp}")
    if config.logging.test_iters % runtime.dp:
        raise UserError(f"logging.test_iters {config.logging.test_iters} is not a multiple of data_parallel {runtime.dp}")
    eval_samples = config.logging.eval_iters * data.micro_batch_size
    test_samples = config.logging.test_iters * data.micro_batch_size or None  # None: no test dataset built
    run_samples = config.schedule.train_steps * data.global_batch_size
    # with a cache, its dataset size: megatron's sample order depends on it, and the cache's rows follow that order
    datasets = build_gpt_datasets(_data_config(config, student_cfg), cache.provenance.dataset_samples if cache else
                                  run_samples, eval_samples, test_samples)
    dp_rank, dp_size = parallel_state.get_data_parallel_rank(), runtime.dp
    train_iter = MicroBatchIterator(datasets.train, data.micro_batch_size, dp_rank=dp_rank, dp_size=dp_size)
    if cache is not None:
        train_iter = CachedTeacherIterator(train_iter, cache, run_samples)

    layout = {"tp": runtime.tp, "pp": runtime.pp, "dp": runtime.dp, "world_size": runtime.world_size}
    step, tokens, skipped_at_resume = 0, 0, 0
    if resume and latest is not None:
        state = ckpt.load_checkpoint(latest, model=model, optimizer=optimizer, layout=layout)
        scheduler.load_state_dict(state["scheduler"])
        train_iter.load_state_dict(state["data"])
        step, tokens, skipped_at_resume = state["step"], state["tokens"], state.get("skipped_steps", 0)

    tokens_per_step = data.global_batch_size * data.seq_length
    flops_per_token = 3 * forward_flops_per_token(student_cfg, data.seq_length)
    if teacher_cfg is not None and cache is None:
        flops_per_token += forward_flops_per_token(teacher_cfg, data.seq_length)
    peak = peak_flops(config.logging.peak_flops, dtype)
    logger = MetricsLogger(run_dir, enabled=runtime.is_main, tensorboard=config.logging.tensorboard,
                           resume_step=step if resume else None)
    stepper = _Step(config, student_cfg, ddp, pair, cache)
    if runtime.is_main:
        print(f"train: {stepper.fused_output_line}", flush=True)
    skips = _Skips(limit=config.optimizer.max_skipped_steps, total=skipped_at_resume)
    preemption = _Preemption()
    tokenizer_dir = hf_tokenizer_dir(config.data.path) or (Path(config.data.path) / metadata["tokenizer"]["path"])

    def train_state() -> dict:
        return {"step": step, "tokens": tokens, "skipped_steps": skips.total, "data": train_iter.state_dict(),
                "scheduler": scheduler.state_dict(),
                "layout": layout, "optimizer_sharding": config.checkpoint.optimizer_sharding}

    @contextlib.contextmanager
    def params_synced():
        # overlap_param_gather leaves the all-gather of updated parameters to the next forward's pre-hooks:
        # checkpoints and validation need them gathered now
        if not config.parallel.overlap_param_gather:
            yield
            return
        ddp.disable_forward_pre_hook(param_sync=True)
        try:
            yield
        finally:
            ddp.enable_forward_pre_hook()

    def save() -> Path:
        with params_synced():
            return _save()

    def _save() -> Path:
        return ckpt.save_checkpoint(run_dir, step, model=model, model_cfg=student_cfg, optimizer=optimizer,
                                    train_state=train_state(), keep_last=config.checkpoint.keep_last,
                                    optimizer_sharding=config.checkpoint.optimizer_sharding,
                                    tokenizer_dir=tokenizer_dir)

    def evaluate(split: Literal["valid", "test"] = "valid") -> dict:
        """Mean CE over the first eval_iters (test_iters) micro-batches of the valid (test) split: the same
        samples at every evaluation and any layout. The search chose on the search split, never these."""
        dataset, iters = (datasets.valid, config.logging.eval_iters) if split == "valid" else (
            datasets.test, config.logging.test_iters)
        split_iter = MicroBatchIterator(dataset, data.micro_batch_size, dp_rank=dp_rank, dp_size=dp_size)
        batches = [_to_device(next(split_iter), runtime.device) for _ in range(iters // dp_size)]
        ddp.eval()
        with torch.no_grad(), params_synced():
            logs = stepper.run(batches, forward_only=True, with_teacher=False)
        ddp.train()
        record = {"kind": split, "step": step, "tokens": tokens, f"{split}_loss": logs["ce"],
                  f"{split}_ppl": float(torch.tensor(logs["ce"]).exp())}
        logger.log(record)
        return record

    progress = None
    if runtime.is_main and config.logging.progress:
        from tqdm import tqdm

        progress = tqdm(total=config.schedule.train_steps, initial=step, unit="step", dynamic_ncols=True)
    last_train, last_valid, last_test, last_saved, status = {}, {}, {}, (latest if resume else None), "completed"
    eval_steps = set(config.logging.eval_steps)
    ddp.train()
    try:
        if config.logging.eval_at_start and step == 0:  # the curve starts at the init itself
            last_valid = evaluate()
        while step < config.schedule.train_steps:
            started = time.perf_counter()
            batches = [_to_device(next(train_iter), runtime.device) for _ in range(num_microbatches)]
            ddp.zero_grad_buffer()
            optimizer.zero_grad()
            logs = stepper.run(batches, forward_only=False, with_teacher=True)
            updated = all(math.isfinite(v) for v in logs.values()) and _grads_finite(ddp)
            if updated:
                scheduler.step(increment=1)
                updated, grad_norm, _ = optimizer.step()
            lr = optimizer.param_groups[0]["lr"]
            step += 1
            if updated:
                skips.consecutive = 0
            else:  # the weights, optimizer state and LR schedule are untouched; the data is consumed
                grad_norm = None
                skips.record(step, logs, run_dir)
            tokens += tokens_per_step
            elapsed = time.perf_counter() - started
            throughput = tokens_per_step / elapsed
            last_train = {"kind": "train", "step": step, "tokens": tokens, **logs, "lr": lr, "skipped": not updated,
                          "skipped_steps": skips.total,
                          "grad_norm": None if grad_norm is None else float(grad_norm),
                          "step_time_s": elapsed, "tokens_per_s": throughput,
                          "mfu": None if peak is None else throughput * flops_per_token / (peak * runtime.world_size)}
            if step % config.logging.log_every == 0 or step == config.schedule.train_steps:
                logger.log(last_train)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{logs['loss']:.4f}", tok_s=f"{throughput:,.0f}")
            if (config.logging.eval_every and step % config.logging.eval_every == 0) or step in eval_steps:
                last_valid = evaluate()
            if config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0:
                last_saved = save()
            if preemption.agreed():
                status = "preempted"
                break
        if status == "completed" and (not last_valid or last_valid["step"] != step):
            last_valid = evaluate()
        if status == "completed" and config.logging.test_iters:  # reported once, at the end
            last_test = evaluate("test")
        if (status == "preempted" or config.checkpoint.save_final) and (
                last_saved is None or last_saved.name != ckpt.step_dir(run_dir, step).name):
            last_saved = save()
    finally:
        preemption.restore()
        if progress is not None:
            progress.close()
        logger.close()
    return TrainResult(run_dir=run_dir, step=step, tokens=tokens, status=status, last_checkpoint=last_saved,
                       final_metrics={**last_train, **last_valid, **last_test, "kind": "final"})
