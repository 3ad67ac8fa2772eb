"""`nemo-subnet plan`: per-GPU memory and step time of a KD run before launching it, or the best layout.

    nemo-subnet plan --teacher pythia-410m --student pythia-160m --seq-length 2048 --micro-batch-size 4 \\
        --global-batch-size 256 --dp 8 --gpu H100
    nemo-subnet plan --teacher llama-3.1-70b --student llama-3.1-8b --seq-length 4096 --global-batch-size 1024 \\
        --cluster --gpus 64x8 --gpu H100 --sequence-parallel --fused-output --tokens 100B
    nemo-subnet plan --teacher llama-3.1-70b --student llama-3.1-8b ... --teacher-cache 12    # train from a cache
    nemo-subnet plan --teacher llama-3.1-70b --student llama-3.1-8b ... --teacher-cache 12 --cache-build --tp 8

Sizes take suffixes (``--tokens 100B``, ``--student-params 8B``, ``--seq-length 4K``; nemo_subnet.config.parse_count).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from nemo_subnet.config import parse_count
from nemo_subnet.errors import UserError

GIB = 2**30


def _count(text: str) -> int:
    try:
        return parse_count(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan", help="per-GPU memory, step time and the best layout of a KD run (no GPU needed)",
        description="Plan a distillation run: per-GPU memory (weights, grads, optimizer, activations, teacher, "
        "KD buffers) and step time on a named GPU; with --cluster the fastest TP x PP x DP and micro-batch that "
        "fit. Models: a preset, an HF directory, a nemo-subnet checkpoint or a model.yaml.")
    p.add_argument("--teacher", help="teacher model (omit for plain pretraining)")
    student = p.add_mutually_exclusive_group(required=True)
    student.add_argument("--student", help="student model")
    student.add_argument("--student-params", help="a parameter budget (e.g. 160M, 8B): a uniform sub-network of the teacher")
    p.add_argument("--seq-length", type=_count, required=True)
    p.add_argument("--micro-batch-size", type=_count, default=1)
    p.add_argument("--global-batch-size", type=_count, required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--dp", type=int, default=1)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--recompute", choices=("none", "selective", "full"), default="none")
    p.add_argument("--recompute-num-layers", type=int, default=1)
    p.add_argument("--sequence-parallel", action="store_true")
    p.add_argument("--no-distributed-optimizer", action="store_true", help="optimizer state replicated over DP")
    p.add_argument("--fused-output", action="store_true", help="fused linear + KD loss (distill.fused_output)")
    p.add_argument("--chunk-size", type=_count, help="tokens per chunk of the fused output (default: the kernel's)")
    p.add_argument("--top-k", type=int, help="top-k teacher distribution")
    p.add_argument("--alpha-ce", type=float, default=0.0, help="CE weight in the loss (0: CE for the logs only)")
    p.add_argument("--teacher-cache", type=int, metavar="K", help="train from a teacher cache of K ids per token "
                   "(distill.teacher_source: cache): no teacher in the step; the cache's bytes and read bandwidth")
    p.add_argument("--cache-method", choices=("sample", "topk"), default="sample", help="the cache's method")
    p.add_argument("--cache-build", action="store_true", help="plan the cache build instead (the teacher forward "
                   "only at --tp/--pp/--dp and --micro-batch-size): memory, tokens/s, the days --tokens take, bytes")
    p.add_argument("--overlap-grad-reduce", action="store_true", help="DP gradient reduce hidden behind backward")
    p.add_argument("--overlap-param-gather", action="store_true", help="distributed optimizer's all-gather hidden")
    p.add_argument("--adam", choices=("fused", "foreach"), default="fused",
                   help="fused: TE/apex Adam (no temporaries); foreach: torch AdamW (megatron's fallback)")
    p.add_argument("--backend", choices=("cuda", "cpu"), default="cuda", help="cpu: plan the CPU implementations")
    p.add_argument("--gpu", default="H100", help="H100, H200 or B200")
    p.add_argument("--mfu", type=float, help="assumed model FLOPs utilisation of the compute (default: the GPU's, 0.40)")
    p.add_argument("--cluster", action="store_true", help="search the fastest layout that fits --gpus")
    p.add_argument("--gpus", default="8", help="with --cluster: NODESxGPUS_PER_NODE, e.g. 64x8 (default 8: one node)")
    p.add_argument("--tokens", type=_count, help="training tokens (e.g. 100B): also print the days they take")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    from nemo_subnet.plan.hardware import gpu
    from nemo_subnet.plan.memory import PlanOptions, plan_memory
    from nemo_subnet.plan.models import resolve_model, uniform_subnet
    from nemo_subnet.plan.search import best_layout, parse_gpus
    from nemo_subnet.plan.throughput import step_time

    try:
        device = gpu(args.gpu)
        teacher = resolve_model(args.teacher) if args.teacher else None
        if args.student_params is not None:
            if teacher is None:
                raise ValueError("--student-params derives the student from --teacher: give a teacher")
            student = uniform_subnet(teacher, parse_count(args.student_params))
        else:
            student = resolve_model(args.student)
        cache = args.teacher_cache
        if (cache is not None or args.cache_build) and teacher is None:
            raise ValueError("--teacher-cache / --cache-build need --teacher (the model the cache comes from)")
        if args.cache_build and cache is None:
            raise ValueError("--cache-build needs --teacher-cache K (the ids the cache stores per token)")
        if cache is not None and teacher.padded_vocab_size != student.padded_vocab_size:
            raise ValueError(f"vocab mismatch: teacher padded vocab {teacher.padded_vocab_size} != student "
                             f"{student.padded_vocab_size}; distillation needs the same tokenizer")
        opts = PlanOptions(
            seq_length=args.seq_length, micro_batch_size=args.micro_batch_size, global_batch_size=args.global_batch_size,
            tp=args.tp, pp=args.pp, dp=args.dp, precision=args.precision, recompute=args.recompute,
            recompute_num_layers=args.recompute_num_layers, sequence_parallel=args.sequence_parallel,
            distributed_optimizer=not args.no_distributed_optimizer, fused_output=args.fused_output or cache is not None,
            teacher_cache=cache, cache_method=args.cache_method,
            chunk_size=args.chunk_size, top_k=args.top_k, alpha_ce=args.alpha_ce, backend=args.backend, adam=args.adam,
            overlap_grad_reduce=args.overlap_grad_reduce, overlap_param_gather=args.overlap_param_gather)
        if args.cache_build:
            from nemo_subnet.plan.cache import plan_cache_build

            build = plan_cache_build(teacher, dataclasses.replace(opts, fused_output=False), device, k=cache,
                                     method=args.cache_method, mfu=args.mfu)
            report = cache_build_dict(teacher, opts, build, device, args.tokens)
            print(json.dumps(report, indent=2) if args.json else format_cache_build(report))
            return 0
        in_step = None if cache is not None else teacher  # from a cache, no teacher in the step
        gpus_per_node = 8
        if args.cluster:
            nodes, gpus_per_node = parse_gpus(args.gpus)
            found = best_layout(student, in_step, opts, device, nodes, gpus_per_node, mfu=args.mfu)
            opts, memory, timing = found.options, found.memory, found.time
        else:
            memory = plan_memory(student, in_step, opts)
            timing = step_time(student, in_step, opts, device, mfu=args.mfu)
    except (ValueError, FileNotFoundError) as err:
        raise UserError(str(err)) from None
    report = to_dict(student, teacher, opts, memory, timing, device, args.tokens, gpus_per_node)
    print(json.dumps(report, indent=2) if args.json else format_text(report))
    return 0


def cache_build_dict(teacher, opts, build, device, tokens) -> dict:
    from nemo_subnet.models.counting import count_parameters

    report = {"teacher": {"parameters": count_parameters(teacher), "hidden": teacher.hidden_size,
                          "layers": teacher.num_layers, "vocab": teacher.padded_vocab_size},
              "layout": {"tp": opts.tp, "pp": opts.pp, "dp": opts.dp, "gpus": opts.tp * opts.pp * opts.dp,
                         "micro_batch_size": opts.micro_batch_size, "seq_length": opts.seq_length},
              "cache": {"k": opts.teacher_cache, "method": opts.cache_method, "bytes_per_token": build.bytes_per_token},
              "memory_per_gpu": {"total_bytes": build.memory_bytes, "gpu_bytes": device.hbm_bytes,
                                 "fits": build.memory_bytes <= device.hbm_bytes, "parts_bytes": build.parts},
              "time": {"gpu": device.name, "mfu_assumed": build.mfu, "tokens_per_s": build.tokens_per_s,
                       "write_bytes_per_s": build.write_bytes_per_s, "model_flops_per_token": build.flops_per_token}}
    if tokens:
        report["time"].update(tokens=tokens, days=tokens / build.tokens_per_s / 86400)
        report["cache"]["storage_bytes"] = tokens * build.bytes_per_token
    return report


def format_cache_build(r: dict) -> str:
    t, lay, c, mem, tm = r["teacher"], r["layout"], r["cache"], r["memory_per_gpu"], r["time"]
    lines = [f"teacher cache build: {t['parameters'] / 1e6:,.1f}M-parameter teacher forward only, "
             f"tp={lay['tp']} pp={lay['pp']} dp={lay['dp']} ({lay['gpus']} GPUs), micro-batch {lay['micro_batch_size']}"
             f" x seq {lay['seq_length']}; K={c['k']} ({c['method']}), {c['bytes_per_token']} bytes per token"]
    for name, value in mem["parts_bytes"].items():
        lines.append(f"  {name:<24} {value / GIB:9.2f} GiB")
    lines.append(f"  {'total':<24} {mem['total_bytes'] / GIB:9.2f} GiB of {mem['gpu_bytes'] / GIB:.0f} GiB on "
                 f"{tm['gpu']}: {'fits' if mem['fits'] else 'DOES NOT FIT'}")
    lines.append(f"  {tm['tokens_per_s']:,.0f} tokens/s at MFU {tm['mfu_assumed']:.2f}, writing "
                 f"{tm['write_bytes_per_s'] / 2**20:,.1f} MiB/s")
    if "days" in tm:
        lines.append(f"  {tm['tokens']:.3g} tokens: {tm['days']:.2f} days, {c['storage_bytes'] / 2**40:.2f} TiB")
    return "\n".join(lines)


def to_dict(student, teacher, opts, memory, timing, device, tokens, gpus_per_node) -> dict:
    from nemo_subnet.models.counting import count_parameters

    world = opts.tp * opts.pp * opts.dp
    report = {
        "student": {"parameters": count_parameters(student), "hidden": student.hidden_size, "layers": student.num_layers,
                    "heads": student.num_attention_heads, "query_groups": student.num_query_groups,
                    "ffn": student.ffn_hidden_size, "vocab": student.padded_vocab_size},
        "teacher": None if teacher is None else {"parameters": count_parameters(teacher), "hidden": teacher.hidden_size,
                                                 "layers": teacher.num_layers},
        "layout": {"tp": opts.tp, "pp": opts.pp, "dp": opts.dp, "gpus": world, "micro_batch_size": opts.micro_batch_size,
                   "global_batch_size": opts.global_batch_size, "num_microbatches": opts.num_microbatches,
                   "seq_length": opts.seq_length},
        "options": {"precision": opts.precision, "recompute": opts.recompute, "sequence_parallel": opts.sequence_parallel,
                    "distributed_optimizer": opts.distributed_optimizer, "fused_output": opts.fused_output,
                    "top_k": opts.top_k, "alpha_ce": opts.alpha_ce, "adam": opts.adam, "backend": opts.backend,
                    "overlap_grad_reduce": opts.overlap_grad_reduce, "overlap_param_gather": opts.overlap_param_gather},
        "memory_per_gpu": {"total_bytes": memory.total, "gpu_bytes": device.hbm_bytes, "fits": memory.total <= device.hbm_bytes,
                           "stage": memory.stage, "peak_phase": memory.phase, "parts_bytes": memory.parts,
                           "phases_bytes": memory.phases},
        "time": {"gpu": device.name, "peak_flops": device.peak_flops(opts.precision), "mfu_assumed": timing.mfu,
                 "step_s": timing.step_s, "compute_s": timing.compute_s, "tp_comm_s": timing.tp_comm_s,
                 "pipeline_bubble_s": timing.bubble_s, "pp_comm_s": timing.pp_comm_s,
                 "exposed_dp_comm_s": timing.exposed_comm_s, "tokens_per_s": timing.tokens_per_s,
                 "tokens_per_s_per_gpu": timing.tokens_per_s / world, "model_flops_per_token": timing.flops_per_token},
    }
    if tokens:
        report["time"]["tokens"] = tokens
        report["time"]["days"] = tokens / timing.tokens_per_s / 86400
    if opts.teacher_cache:
        from nemo_subnet.plan.cache import cache_bytes_per_token

        size = cache_bytes_per_token(teacher, opts.teacher_cache, opts.cache_method)
        nodes = max(1, -(-world // gpus_per_node))
        report["teacher_cache"] = {"k": opts.teacher_cache, "method": opts.cache_method, "bytes_per_token": size,
                                   "read_bytes_per_s": timing.tokens_per_s * size,
                                   "read_bytes_per_s_per_node": timing.tokens_per_s * size / nodes}
        if tokens:
            report["teacher_cache"]["storage_bytes"] = tokens * size
    return report


def format_text(r: dict) -> str:
    s, t, lay, mem, tm = r["student"], r["teacher"], r["layout"], r["memory_per_gpu"], r["time"]
    lines = [f"student {s['parameters'] / 1e6:,.1f}M params (hidden {s['hidden']}, {s['layers']} layers, {s['heads']} heads /"
             f" {s['query_groups']} groups, ffn {s['ffn']}, vocab {s['vocab']})"]
    lines.append("teacher none (plain pretraining)" if t is None else
                 f"teacher {t['parameters'] / 1e6:,.1f}M params (hidden {t['hidden']}, {t['layers']} layers)")
    o = r["options"]
    lines.append(f"layout tp={lay['tp']} pp={lay['pp']} dp={lay['dp']} ({lay['gpus']} GPUs), seq {lay['seq_length']}, "
                 f"micro-batch {lay['micro_batch_size']} x {lay['num_microbatches']} micro-batches = global "
                 f"{lay['global_batch_size']}")
    lines.append("options " + ", ".join(f"{k}={v}" for k, v in o.items()))
    lines.append("")
    lines.append(f"memory per GPU (pipeline stage {mem['stage']}, peak in '{mem['peak_phase']}'):")
    for name, value in mem["parts_bytes"].items():
        lines.append(f"  {name:<24} {value / GIB:9.2f} GiB")
    verdict = "fits" if mem["fits"] else "DOES NOT FIT"
    lines.append(f"  {'total':<24} {mem['total_bytes'] / GIB:9.2f} GiB of {mem['gpu_bytes'] / GIB:.0f} GiB on "
                 f"{tm['gpu']}: {verdict}")
    lines.append("  phases: " + ", ".join(f"{k} {v / GIB:.2f}" for k, v in mem["phases_bytes"].items()) + " GiB")
    lines.append("")
    lines.append(f"time on {tm['gpu']} ({tm['peak_flops'] / 1e12:,.0f} TFLOP/s peak, assumed MFU {tm['mfu_assumed']:.2f}):")
    lines.append(f"  step {tm['step_s']:.3f} s = compute {tm['compute_s']:.3f} + TP comm {tm['tp_comm_s']:.3f}"
                 f" + pipeline bubble {tm['pipeline_bubble_s']:.3f} + PP p2p {tm['pp_comm_s']:.3f}"
                 f" + exposed DP comm {tm['exposed_dp_comm_s']:.3f}")
    lines.append(f"  {tm['tokens_per_s']:,.0f} tokens/s ({tm['tokens_per_s_per_gpu']:,.0f} per GPU), "
                 f"{tm['model_flops_per_token'] / 1e9:.2f} GFLOP per token")
    if "days" in tm:
        lines.append(f"  {tm['tokens']:.3g} tokens: {tm['days']:.2f} days")
    if "teacher_cache" in r:
        c = r["teacher_cache"]
        lines.append(f"teacher cache K={c['k']} ({c['method']}): no teacher in the step; {c['bytes_per_token']} bytes per "
                     f"token, read at {c['read_bytes_per_s'] / 2**20:,.1f} MiB/s ({c['read_bytes_per_s_per_node'] / 2**20:,.1f}"
                     " per node)" + (f"; {c['storage_bytes'] / 2**40:.2f} TiB for the tokens" if "storage_bytes" in c else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit("run as `nemo-subnet plan`")
