"""What a search costs on the real teacher (SmolLM2-135M): own-size vs masked evaluation, fidelity, budgets, FLOPs.

Sections (``--sections``, each cached in --work, results under --out):

1. ``speed``: the first ``--candidates`` asks of an evolutionary search at a 1/3 budget (default space:
   fine-uniform, importance-ordered, round_to 8 -- the recipe's), each evaluated masked (today's objective)
   and compact (own size) on the same ``--val-batches``, in alternating order; candidates/s by wall and CPU
   seconds, executed FLOPs per candidate, relative objective difference.
2. ``fidelity``: ``--corr-candidates`` candidates at the budget, each evaluated batch by batch, so the
   perplexity of every prefix (every rung of any schedule) comes from one full evaluation; Spearman rank
   correlation of each prefix with the full evaluation, the default schedule's lowest rung marked.
3. ``break_even``: one 1/3 candidate, masked vs compact (build included) at growing evaluation tokens, and
   the compact copy's bytes: where masked evaluation is the better trade.
4. ``demo``: FLOPs of importance + search in the demo's setting (nemo_subnet/demo.py) against its student
   training, from the FLOP counter (search/objective.py) and the search loop's own rung counts.
5. ``defaults``: the same 12 random candidates searched before (masked, all batches) and with the defaults
   (compact, the default rungs): tokens, FLOPs and the searches' own seconds.
6. ``family``: ``nemo-subnet search --budgets 0.25 0.33 0.5`` on the real teacher; its output lines.

Writes ``search_cost.csv``, ``search_cost.md`` and ``search_cost.png`` (cost per candidate, fidelity correlation).
The machine is shared: timings are paired (masked and compact of one candidate back to back) and both wall
and process CPU seconds are reported.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", type=Path, default=Path("/work/assets/smollm2_ckpt"))
    p.add_argument("--data", type=Path, default=Path("/work/assets/smollm2_search_view"))
    p.add_argument("--work", type=Path, default=Path("/tmp/nemo_subnet_bench_search_cost"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--budget", type=float, default=0.33)
    p.add_argument("--candidates", type=int, default=12, help="speed: candidates timed both ways")
    p.add_argument("--corr-candidates", type=int, default=24, help="fidelity: candidates ranked at every prefix")
    p.add_argument("--val-batches", type=int, default=8, help="full-fidelity micro-batches (the search's default)")
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--family-evaluations", type=int, default=18)
    p.add_argument("--sections", default="speed,fidelity,break_even,demo,defaults,family")
    return p.parse_args(argv)


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation (average ranks for ties); written here because scipy is not a dependency."""
    def ranks(x):
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


class Bench:
    def __init__(self, args):
        from nemo_subnet.importance.evaluation import load_batches, load_supernet
        from nemo_subnet.importance.scores import ImportanceScores
        from nemo_subnet.search import Budget, SearchSpace, check_budget, resolve_space

        self.args = args
        self.cfg, self.model = load_supernet(args.ckpt)
        self.data = load_batches(args.data, self.cfg, split="valid", num_batches=args.val_batches,
                                 seq_length=args.seq_length, micro_batch_size=args.micro_batch_size, seed=1234)
        self.scores = ImportanceScores.load(self.scores_path())
        self.rspace = resolve_space(SearchSpace(granularity="fine_uniform", ordering="importance", round_to=8), self.cfg)
        self.bounds = check_budget(self.rspace, Budget(args.budget, 0.05))

    def scores_path(self) -> Path:
        path = self.args.work / "scores.safetensors"
        if not path.is_file():  # the new-user setting: 4 batches of 512 tokens, the default (cosine) metric
            from nemo_subnet.cli import main

            assert main(["importance", "--ckpt", str(self.args.ckpt), "--data", str(self.args.data), "--out", str(path),
                         "--batches", "4", "--seq-length", "512"]) == 0
        return path

    def objective(self, forward):
        from nemo_subnet.search import EvalForward
        from nemo_subnet.search.objective import SupernetPerplexity

        return SupernetPerplexity(self.model, self.cfg, self.data, forward=EvalForward(forward))

    def candidates(self, n: int, strategy: str, seed: int = 0, tell=None):
        from nemo_subnet.search import make_strategy

        strat = make_strategy(strategy, self.rspace, self.bounds, seed)
        for _ in range(n):
            genome = strat.ask()
            subnet = self.rspace.subnet(genome, self.scores)
            value = yield genome, subnet
            strat.tell(genome, value)


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def section_speed(bench: Bench) -> list[dict]:
    rows, masked, compact = [], bench.objective("masked"), bench.objective("compact")
    gen = bench.candidates(bench.args.candidates, "evolutionary")
    sent = None
    for i in range(bench.args.candidates):
        genome, subnet = gen.send(sent)
        order = [("masked", masked), ("compact", compact)][:: 1 if i % 2 == 0 else -1]
        out = {}
        for name, objective in order:
            value, wall, cpu = _timed(lambda: objective(subnet))
            tokens, flops = objective.cost(subnet)
            out[name] = dict(value=value, wall=wall, cpu=cpu, flops=flops, tokens=tokens)
        sent = out["compact"]["value"]
        rows.append({"section": "speed", "candidate": i, "params": bench.rspace.params(genome),
                     "layers": bench.rspace.sizes(genome).layers, "hidden": bench.rspace.sizes(genome).hidden,
                     **{f"{k}_{name}": v for name, o in out.items() for k, v in o.items()},
                     "rel_diff": abs(out["compact"]["value"] - out["masked"]["value"]) / out["masked"]["value"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def section_fidelity(bench: Bench) -> list[dict]:
    import torch

    from nemo_subnet.importance.evaluation import EvalData, evaluate_loss
    from nemo_subnet.subnet.compact import compact_subnet

    rows = []
    gen = bench.candidates(bench.args.corr_candidates, "random", seed=1)
    sent = None
    for i in range(bench.args.corr_candidates):
        genome, subnet = gen.send(sent)
        model = compact_subnet(bench.model, subnet)
        sums, tokens = [], []
        for batch in bench.data.batches:  # one full evaluation, split per micro-batch: every prefix at once
            one = EvalData([batch], bench.data.seq_length, bench.data.micro_batch_size, 1)
            n = float(batch["loss_mask"].sum().cpu())
            sums.append(evaluate_loss(model, bench.cfg, one) * n)
            tokens.append(n)
        del model
        prefix = [float(torch.tensor(sum(sums[:k]) / sum(tokens[:k])).exp()) for k in range(1, len(sums) + 1)]
        sent = prefix[-1]
        rows.append({"section": "fidelity", "candidate": i, "params": bench.rspace.params(genome),
                     "prefix_ppl": json.dumps(prefix)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def section_break_even(bench: Bench) -> list[dict]:
    from nemo_subnet.importance.evaluation import random_batches
    from nemo_subnet.search.objective import SupernetPerplexity
    from nemo_subnet.subnet.compact import compact_subnet

    genome, subnet = next(bench.candidates(1, "random", seed=2))
    _, build_wall, build_cpu = _timed(lambda: compact_subnet(bench.model, subnet))
    compact_bytes = sum(p.numel() * p.element_size() for p in compact_subnet(bench.model, subnet).parameters())
    rows = []
    for batches, mbs, seq in ((1, 1, 16), (1, 1, 64), (1, 1, 128), (1, 4, 128), (4, 4, 128)):
        data = random_batches(bench.cfg.vocab_size, num_batches=batches, seq_length=seq, micro_batch_size=mbs)
        out = {}
        for forward in ("masked", "compact", "masked", "compact"):  # twice each, keep the faster (shared machine)
            objective = SupernetPerplexity(bench.model, bench.cfg, data, forward=forward)
            _, wall, cpu = _timed(lambda: objective(subnet))
            out[forward] = min(out.get(forward, (1e9, 1e9)), (wall, cpu))
        rows.append({"section": "break_even", "tokens": batches * mbs * seq, "params": bench.rspace.params(genome),
                     "wall_masked": out["masked"][0], "cpu_masked": out["masked"][1], "wall_compact": out["compact"][0],
                     "cpu_compact": out["compact"][1], "build_wall": build_wall, "build_cpu": build_cpu,
                     "compact_bytes": compact_bytes})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def section_demo() -> list[dict]:
    """Importance + search FLOPs of the demo's setting vs its student training, every evaluation mode."""
    from nemo_subnet.demo import demo_config
    from nemo_subnet.models.config import ModelConfig
    from nemo_subnet.search import SearchSpace, check_budget, make_strategy, resolve_space, search_loop
    from nemo_subnet.search.fidelity import DEFAULT_REDUCTION, DEFAULT_RUNGS, rung_batches
    from nemo_subnet.search.objective import flops_per_token, forward_flops
    from nemo_subnet.search.results import RunDir
    from nemo_subnet.subnet.config import SubnetConfig

    pc = demo_config("/tmp/unused")
    t, s = pc.teacher, pc.search
    imp, ev = pc.importance, s.eval
    cfg = ModelConfig(family="llama", vocab_size=pc.data.vocab_size, hidden_size=t.hidden_size, num_layers=t.num_layers,
                      num_attention_heads=t.num_attention_heads, num_query_groups=t.num_query_groups,
                      ffn_hidden_size=t.ffn_hidden_size, kv_channels=t.hidden_size // t.num_attention_heads,
                      max_position_embeddings=t.max_position_embeddings, normalization="RMSNorm", norm_eps=1e-5,
                      activation="silu", gated_mlp=True, add_bias_linear=False, add_qkv_bias=False)
    rspace = resolve_space(SearchSpace(granularity=s.space.granularity, ordering="first_k",
                                       round_to=s.space.round_to), cfg)
    bounds = check_budget(rspace, s.budget)
    seq, micro = ev.seq_length, ev.micro_batch_size
    calib_tokens, calib_seq = imp.batches * imp.micro_batch_size * imp.seq_length, imp.seq_length
    teacher_fwd = forward_flops(cfg, SubnetConfig(), calib_seq)
    importance = {"cosine (now)": calib_tokens * teacher_fwd,
                  "layer drop (before)": calib_tokens * (2 * teacher_fwd + sum(
                      forward_flops(cfg, SubnetConfig(layers=[j for j in range(cfg.num_layers) if j != i]), calib_seq)
                      for i in range(cfg.num_layers)))}

    class Counted:  # the objective's accounting without a model: values are a seeded draw, costs the counter's
        def __init__(self, forward):
            self.forward, self.rng = forward, random.Random(0)

        def __call__(self, subnet, batches):
            return self.rng.random()

        def cost(self, subnet, batches):
            executed = subnet if self.forward == "compact" else SubnetConfig(layers=subnet.layers)
            return batches * micro * seq, batches * micro * seq * forward_flops(cfg, executed, seq)

    rows, student = [], None
    for forward in ("masked", "compact"):
        for rungs in (1, DEFAULT_RUNGS):
            schedule = rung_batches(ev.batches, rungs, DEFAULT_REDUCTION)
            work = Path(f"/tmp/nemo_subnet_bench_demo_{forward}_{rungs}")
            RunDir(work).start({}, overwrite=True)
            result = search_loop(rspace, make_strategy(s.strategy, rspace, bounds, s.seed), Counted(forward),
                                 RunDir(work), s.evaluations, rungs=schedule, reduction=DEFAULT_REDUCTION,
                                 seq_length=seq, progress=False,
                                 plots=False)
            summary = json.loads((work / "summary.json").read_text())
            student = student or result.best
            st = pc.student_train
            train_tokens = st.schedule.train_steps * st.data.global_batch_size * st.data.seq_length
            train = flops_per_token(cfg, student, st.data.seq_length) * train_tokens
            kd_teacher = forward_flops(cfg, SubnetConfig(), st.data.seq_length) * train_tokens
            for name, imp in importance.items():
                rows.append({"section": "demo", "forward": forward, "rungs": json.dumps(schedule), "importance": name,
                             "evaluations": summary["evaluations"], "importance_flops": imp,
                             "search_flops": summary["flops"], "student_train_flops": train,
                             "kd_teacher_flops": kd_teacher, "share_of_training": (imp + summary["flops"]) / train,
                             "share_with_kd_teacher": (imp + summary["flops"]) / (train + kd_teacher)})
    return rows


def _search_cli(args, name: str, *extra: str) -> tuple[list[str], list[str], dict]:
    """(command, output lines, summary.json) of ``nemo-subnet search`` on the real teacher into work/name."""
    (args.work / "space.yaml").write_text("granularity: fine_uniform\nordering: importance\nround_to: 8\n")
    cmd = [sys.executable, "-m", "nemo_subnet.cli", "search", "--ckpt", str(args.ckpt), "--data", str(args.data),
           "--space", str(args.work / "space.yaml"), "--scores", str(args.work / "scores.safetensors"),
           "--out", str(args.work / name), "--overwrite", "--no-progress", "--val-batches", str(args.val_batches),
           "--seq-length", str(args.seq_length), "--micro-batch-size", str(args.micro_batch_size), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    lines = [x for x in proc.stdout.splitlines() if x.strip()]
    print("\n".join(lines))
    return ["nemo-subnet", *cmd[3:]], lines, json.loads((args.work / name / "summary.json").read_text())


def section_family(args) -> list[dict]:
    cmd, lines, summary = _search_cli(args, "family", "--budgets", "0.25", "0.33", "0.5", "--evaluations",
                                      str(args.family_evaluations), "--population", "4")
    return [{"section": "family", "command": " ".join(cmd), "output": json.dumps(lines), "seconds": summary["seconds"]}]


def section_defaults(args) -> list[dict]:
    """Before (masked, every candidate on all batches) vs the defaults (compact, default rungs): the same 12 random
    candidates, whole searches; wall seconds are the searches' own (summary.json, model loading excluded), CPU
    seconds the whole process's (loading included; steadier than wall on a shared machine)."""
    import resource

    rows = []
    for name, extra in (("before", ["--forward", "masked", "--rungs", "1"]), ("after", [])):
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        _, _, summary = _search_cli(args, name, "--budget", str(args.budget), "--strategy", "random",
                                    "--evaluations", "12", *extra)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
        rows.append({"section": "defaults", "run": name, **{k: summary[k] for k in (
            "candidates", "evaluations", "tokens", "flops", "seconds")}, "process_cpu_seconds": round(cpu, 1),
            "best_objective": summary["best"]["objective"]})
    return rows


def _cached(args, name: str, fn) -> list[dict]:
    path = args.work / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    rows = fn()
    from nemo_subnet.files import write_text_atomic

    write_text_atomic(path, json.dumps(rows, indent=1))
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    from nemo_subnet.files import write_text_atomic

    columns = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def summarize(args, results: dict, commit: str) -> list[str]:
    from nemo_subnet.search.fidelity import rung_batches
    from nemo_subnet.search.fidelity import DEFAULT_REDUCTION, DEFAULT_RUNGS

    md = [f"# Search cost on SmolLM2-135M (CPU, 2 shared cores; commit {commit})", "",
          f"Budget {args.budget} (fine-uniform, importance-ordered, round_to 8), {args.val_batches} x "
          f"{args.micro_batch_size} x {args.seq_length} tokens per full evaluation. The machine was shared with other "
          "jobs: masked and compact ran back to back per candidate; CPU seconds are the process's own.", ""]
    if "speed" in results:
        rows = results["speed"]
        n = len(rows)
        wall = {f: sum(r[f"wall_{f}"] for r in rows) for f in ("masked", "compact")}
        cpu = {f: sum(r[f"cpu_{f}"] for r in rows) for f in ("masked", "compact")}
        flops = {f: sum(r[f"flops_{f}"] for r in rows) / n for f in ("masked", "compact")}
        md += ["## Candidates per second at equal evaluation tokens", "",
               "| forward | candidates/s (wall) | candidates/s (CPU) | forward FLOPs / candidate |", "|---|---|---|---|"]
        for f in ("masked", "compact"):
            md.append(f"| {f}{' (before)' if f == 'masked' else ' (after)'} | {n / wall[f]:.4f} | {n / cpu[f]:.4f} | "
                      f"{flops[f]:.3e} |")
        md += ["", f"Speed-up: **{wall['masked'] / wall['compact']:.2f}x** (wall), {cpu['masked'] / cpu['compact']:.2f}x "
               f"(CPU); FLOPs ratio {flops['masked'] / flops['compact']:.2f}x; {n} candidates; largest relative "
               f"objective difference compact vs masked {max(r['rel_diff'] for r in rows):.1e}.", ""]
    if "fidelity" in results:
        prefixes = [json.loads(r["prefix_ppl"]) for r in results["fidelity"]]
        full = [p[-1] for p in prefixes]
        rho = [spearman([p[k] for p in prefixes], full) for k in range(len(full and prefixes[0]))]
        schedule = rung_batches(args.val_batches, DEFAULT_RUNGS, DEFAULT_REDUCTION)
        lowest = schedule[0]
        md += ["## Rank correlation of a fidelity with the full evaluation", "",
               "| batches | tokens | Spearman vs full |", "|---|---|---|"]
        md += [f"| {k + 1}{' (default lowest rung)' if k + 1 == lowest else ''} | "
               f"{(k + 1) * args.micro_batch_size * args.seq_length} | {r:.3f} |" for k, r in enumerate(rho)]
        best = sorted(range(len(full)), key=lambda i: full[i])[: len(full) // 2]
        rho_best = [spearman([prefixes[i][k] for i in best], [full[i] for i in best]) for k in range(len(rho))]
        md += ["", f"{len(prefixes)} candidates at the budget; default schedule {schedule}"
               f" batches. Among the better half only (closer values, what promotions decide between): "
               f"{', '.join(f'{k + 1} batch(es) {r:.2f}' for k, r in enumerate(rho_best[:3]))}.", ""]
        results["_rho"] = rho
    if "break_even" in results:
        rows = results["break_even"]
        md += ["## When masked evaluation is the better trade", "",
               "| tokens | masked s (CPU) | compact s incl. build (CPU) |", "|---|---|---|"]
        md += [f"| {r['tokens']} | {r['cpu_masked']:.3f} | {r['cpu_compact']:.3f} |" for r in rows]
        md += ["", f"Building the compact copy: {rows[0]['build_cpu']:.3f} s CPU, {rows[0]['compact_bytes'] / 2**20:.0f} MiB "
               f"({rows[0]['params']:,} parameters) next to the resident teacher.", ""]
    if "demo" in results:
        md += ["## Importance + search FLOPs of the demo's setting vs its student training", "",
               "| forward | rungs (batches) | importance | evaluations | importance FLOPs | search FLOPs | share of "
               "student training | share incl. KD teacher forward |", "|---|---|---|---|---|---|---|---|"]
        md += [f"| {r['forward']} | {r['rungs']} | {r['importance']} | {r['evaluations']} | {r['importance_flops']:.2e} | "
               f"{r['search_flops']:.2e} | {r['share_of_training']:.1%} | {r['share_with_kd_teacher']:.1%} |"
               for r in results["demo"]]
        compact = next(r for r in results["demo"] if r["forward"] == "compact" and r["rungs"] == json.dumps([4]))
        per_candidate = compact["search_flops"] / compact["evaluations"]
        room = 0.1 * compact["student_train_flops"] - compact["importance_flops"]
        md += ["", f"Per candidate (compact, all {json.loads(compact['rungs'])[0]} batches): {per_candidate:.2e} FLOPs; "
               f"10% of the student's training ({compact['student_train_flops']:.2e}) leaves {room:.2e} after importance: "
               f"{max(room, 0) / per_candidate:.0f} full evaluations (2x that many candidates under the default "
               "rungs, whose lowest rung costs a quarter and promotes a quarter).", ""]
    if "defaults" in results:
        before, after = results["defaults"]
        md += ["## Default settings: compact + successive halving vs before (masked, all batches)", "",
               "| run | candidates | evaluations | tokens | FLOPs | search wall s | process CPU s | best ppl |",
               "|---|---|---|---|---|---|---|---|"]
        md += [f"| {r['run']} | {r['candidates']} | {r['evaluations']} | {r['tokens']:,} | {r['flops']:.3e} | "
               f"{r['seconds']:.1f} | {r['process_cpu_seconds']:.1f} | {r['best_objective']:.4f} |" for r in (before, after)]
        md += ["", f"Candidates/s at the defaults: **{before['process_cpu_seconds'] / after['process_cpu_seconds']:.2f}x** "
               f"by process CPU (model loading included), {before['seconds'] / after['seconds']:.2f}x by search wall "
               f"time (noisy: shared machine); FLOPs {before['flops'] / after['flops']:.2f}x less (the same 12 random "
               "candidates and the same best).", ""]
    if "family" in results:
        fam = results["family"][0]
        md += ["## A family of budgets in one search", "", f"`{fam['command']}` ({fam['seconds']} s):", "", "```",
               *json.loads(fam["output"]), "```", ""]
    return md


def plot(args, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if "speed" in results:
        rows = results["speed"]
        axes[0].scatter([r["params"] for r in rows], [r["cpu_masked"] for r in rows], label="masked (before)")
        axes[0].scatter([r["params"] for r in rows], [r["cpu_compact"] for r in rows], label="compact (after)")
        axes[0].set(xlabel="candidate parameters", ylabel="CPU s per candidate", title="evaluation cost per candidate")
        axes[0].legend()
    if "_rho" in results:
        rho = results["_rho"]
        tokens = [(k + 1) * args.micro_batch_size * args.seq_length for k in range(len(rho))]
        axes[1].plot(tokens, rho, "o-")
        axes[1].axhline(0.8, color="C3", ls="--", label="target 0.8")
        axes[1].set(xlabel="evaluation tokens (prefix)", ylabel="Spearman vs full", title="fidelity rank correlation")
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(args.out / "search_cost.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    from harness import git_commit

    from nemo_subnet.runtime import init_runtime

    init_runtime(tp=1, pp=1, seed=0)
    sections = args.sections.split(",")
    bench = Bench(args) if {"speed", "fidelity", "break_even"} & set(sections) else None
    makers = {"speed": lambda: section_speed(bench), "fidelity": lambda: section_fidelity(bench),
              "break_even": lambda: section_break_even(bench), "demo": section_demo,
              "family": lambda: section_family(args), "defaults": lambda: section_defaults(args)}
    results = {name: _cached(args, name, makers[name]) for name in sections}
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "search_cost.csv", [r for name in sections for r in results[name]])
    from harness import write_markdown

    write_markdown(args.out / "search_cost.md", summarize(args, results, git_commit()))
    plot(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
