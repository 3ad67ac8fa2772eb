"""Run a study: shared data / teacher / importance (the pipeline's stages), the inits, teacher caches, seeded runs.

Everything is the pipeline's own code and configs: ``run_pipeline`` makes ``base/{data,teacher,importance}``;
``run_search`` (the search command's function) runs the base config's ``search`` section per init (granularity,
budget, strategy, seed and, for the full-fidelity variant, rungs and forward changed) on the search split;
``extract_checkpoint`` slices the pick; ``build_teacher_cache`` builds a seed's cache; ``train`` (the train
command's function) runs each (row, seed) from the ``TrainConfig`` ``stages.train_run`` makes of
``base.student_train``, so every run measures valid from step 0 and test once at its end.

Seeds: a seed sets the data order (``data.seed``), a random init's weights, and the random and evolutionary
searches' seeds (``search_seed``: different for the two strategies, so evolutionary's first generation is not
random search's first candidates). The valid and test samples are the same for every seed (``eval_seed``).

Resumable per (row, seed): a finished run writes ``runs/<row>/seed<k>/result.json`` atomically, with the training
settings it ran (the student's ``TrainConfig``), and a rerun reads it back while those settings still hold (a
changed setting, say ``long_factor``, trains that run again; how a run shows progress is no setting); inits
(``inits/<name>[/seed<k>]/init.json``) and caches (``caches/<spec>/seed<k>``) likewise. The order is by tier
(``Row.tier``), then seed: a study cut short has its most telling comparisons on every seed, paired.

FLOPs (counted separately, summed for compute-to-target; report.py):
- student fwd+bwd: 3 x ``models.counting.forward_flops_per_token`` of the student trained (its model.yaml);
- teacher forward during online KD: the same counter for the teacher;
- importance: what the importance stage recorded (its scores' ``meta["flops"]``: only the passes it ran), charged
  to every init that read the scores (Minitron, first-k, both searches);
- search: what the search recorded (``summary.json`` ``flops``: every evaluation's executed forward FLOPs at every
  rung, at the candidate's own size when evaluated compact); first-k is charged Minitron's (it takes that pick's sizes);
- teacher cache: the build's teacher forward over the samples it covers, divided by the runs that read it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

from nemo_subnet import config as configs
from nemo_subnet.files import write_text_atomic
from nemo_subnet.pipeline.config import section
from nemo_subnet.study.config import CacheSpec, Init, Row, StudyConfig

TEACHER_EVAL = "base/teacher_eval.json"
"""The teacher's valid / test perplexity on the students' evaluation samples (context for the target)."""
STRATEGY = {"minitron": "proxy", "random_search": "random", "evolutionary": "evolutionary"}


def _atomic_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=1))


class StudyStopped(Exception):
    """A run was stopped before its end (SIGTERM): nothing of it is recorded, the study ends there."""


def search_seed(kind: str, seed: int) -> int:
    """The search's seed for a study seed: differs per seed and between random and evolutionary search."""
    return 1000 * seed + {"minitron": 0, "random_search": 1, "evolutionary": 2}[kind]


class Study:
    def __init__(self, config: StudyConfig, log=print):
        self.config, self.log = config, log
        self.out = Path(config.out_dir).absolute()
        self.base = dataclasses.replace(config.base, out_dir=str(self.out / "base"))

    # --- shared stages --------------------------------------------------------------------------------
    def shared(self) -> None:
        from nemo_subnet.checkpointing import read_model_config
        from nemo_subnet.pipeline import run_pipeline

        run_pipeline(self.base, ["data", "teacher", "importance"], log=self.log)
        self.teacher_ckpt = self.out / "base" / "teacher" / "model"
        self.teacher_cfg = read_model_config(self.teacher_ckpt)
        self.evaluate_teacher()

    def evaluate_teacher(self) -> dict:
        """The teacher's valid and test perplexity on the students' own (fixed) samples: ``teacher_eval.json``."""
        from nemo_subnet.pipeline.evaluate_model import evaluate_model
        from nemo_subnet.pipeline.stages import train_run

        path = self.out / TEACHER_EVAL
        if not path.is_file():
            spec = section(self.base.student_train, **{"data.eval_seed": self.config.eval_seed})
            _atomic_json(path, evaluate_model(self.teacher_ckpt, train_run(spec, self.out, self.data_dir)))
        return json.loads(path.read_text())

    @property
    def data_dir(self) -> Path:
        return self.out / "base" / "data"

    def teacher_forward_flops(self, seq_length: int) -> float:
        """Forward FLOPs per token of the full teacher."""
        from nemo_subnet.models.counting import forward_flops_per_token

        return forward_flops_per_token(self.teacher_cfg, seq_length)

    def importance_flops(self) -> float:
        """What the importance stage recorded: its calibration pass, and layer-drop passes only if it ran them."""
        from nemo_subnet.importance.scores import ImportanceScores

        meta = ImportanceScores.load(self.out / "base" / "importance" / "scores.safetensors").meta
        return float(meta["flops"])

    # --- inits ----------------------------------------------------------------------------------------
    def init(self, init: Init, seed: int) -> dict:
        """{"checkpoint" or "model_yaml", "subnet", "importance_flops", "search_flops", "evaluations",
        "hf_parameters"}; cached in ``inits/<name>`` (``inits/<name>/seed<k>`` for per-seed searches)."""
        directory = self.out / "inits" / init.name / (f"seed{seed}" if init.searched_per_seed else "")
        info_path = directory / "init.json"
        if info_path.is_file():
            return json.loads(info_path.read_text())
        pick = Init("minitron", init.granularity, init.budget)
        if init.kind == "random":  # the Minitron pick's architecture with random weights; its choice is not charged
            shape = self.init(pick, seed)
            info = {"model_yaml": str(Path(shape["checkpoint"]) / "model.yaml"), "subnet": shape["subnet"],
                    "importance_flops": 0.0, "search_flops": 0.0, "evaluations": 0,
                    "hf_parameters": shape["hf_parameters"]}
            _atomic_json(info_path, info)
            return info
        from nemo_subnet.subnet.config import SubnetConfig
        from nemo_subnet.subnet.extract import extract_checkpoint

        if init.kind == "firstk":  # Minitron's sizes, the first k units: charged what finding those sizes cost
            minitron = self.init(pick, seed)
            subnet = _first_k(minitron["subnet"])
            flops = {k: minitron[k] for k in ("importance_flops", "search_flops", "evaluations")}
        else:
            subnet, flops = self._search(init, directory / "search", seed)
        if directory.joinpath("model").exists():
            shutil.rmtree(directory / "model")
        extract_checkpoint(self.teacher_ckpt, SubnetConfig.from_dict(subnet), directory / "model")
        info = {"checkpoint": str(directory / "model"), "subnet": subnet, **flops,
                "hf_parameters": _exported_parameters(directory / "model")}
        _atomic_json(info_path, info)
        return info

    def _search(self, init: Init, out: Path, seed: int) -> tuple[dict, dict]:
        from nemo_subnet.pipeline.stages import search_data, teacher_checkpoint
        from nemo_subnet.search.runner import run_search

        s = self.base.search
        changes = {"rungs": 1, "forward": "masked"} if init.fidelity == "full" else {}
        run_search(section(s, ckpt=teacher_checkpoint(self.out / "base"), data=search_data(self.out / "base"), out=out,
                           scores=self.out / "base" / "importance" / "scores.safetensors",
                           space=section(s.space, granularity=init.granularity),
                           budget=section(s.budget, target=init.budget), budgets=None, strategy=STRATEGY[init.kind],
                           seed=search_seed(init.kind, seed), eval=section(s.eval, **changes),
                           evaluations=1 if init.kind == "minitron" else s.evaluations,
                           progress=False, plots=False, overwrite=True))
        summary = json.loads((out / "summary.json").read_text())
        return summary["best"]["subnet"], {"importance_flops": self.importance_flops(),
                                           "evaluations": summary["candidates"], "search_flops": summary["flops"]}

    # --- teacher caches ---------------------------------------------------------------------------------
    def cache(self, spec: CacheSpec, seed: int, spec_run) -> dict:
        """A seed's teacher cache covering ``spec_run``'s samples: {"path", "build_flops", "served"}; cached."""
        from nemo_subnet.teacher_cache.build import build_teacher_cache
        from nemo_subnet.teacher_cache.config import TeacherCacheConfig

        directory = self.out / "caches" / spec.name / f"seed{seed}"
        info_path = directory / "cache.json"
        if info_path.is_file():
            return json.loads(info_path.read_text())
        shutil.rmtree(directory, ignore_errors=True)
        build = section(TeacherCacheConfig.for_run(spec_run), out=directory / "cache", method=spec.method, k=spec.k,
                        seed=seed, progress=False)
        result = build_teacher_cache(build)
        seq = spec_run.data.seq_length
        served = sum(1 for row in self.config.rows() if row.cache == spec)  # runs of this seed that read it
        info = {"path": str(result.out), "served": served, "build_s": round(result.seconds, 1),
                "bytes_per_token": result.bytes_per_token,
                "build_flops": result.covered * seq * self.teacher_forward_flops(seq)}
        _atomic_json(info_path, info)
        return info

    # --- runs -----------------------------------------------------------------------------------------
    def run_seed(self, row: Row, seed: int) -> dict:
        from nemo_subnet.models.config import ModelConfig
        from nemo_subnet.models.counting import forward_flops_per_token
        from nemo_subnet.pipeline.stages import train_run
        from nemo_subnet.training.loop import train
        from nemo_subnet.training.tokens_to_target import validation_curve

        run_dir = self.out / "runs" / row.name / f"seed{seed}"
        result_path = run_dir / "result.json"
        init = self.init(row.init, seed)
        spec = self.base.student_train
        seq = spec.data.seq_length
        student = ModelConfig.load(init.get("model_yaml") or Path(init["checkpoint"]) / "model.yaml")
        student_fpt = 3 * forward_flops_per_token(student, seq)
        teacher_fpt = self.teacher_forward_flops(seq)
        steps = spec.schedule.train_steps
        if row.tokens == "reference":
            steps *= self.config.long_factor
        elif row.tokens == "kd_compute":  # the teacher's forward per KD token, spent on student tokens instead
            steps = round(steps * (student_fpt + teacher_fpt) / student_fpt)
        spec = section(spec, seed=seed, **{
            "schedule.train_steps": steps, "data.seed": seed, "data.eval_seed": self.config.eval_seed,
            "logging.progress": True, "logging.tensorboard": False, "checkpoint.every_steps": 0,
            "checkpoint.keep_last": 1, "checkpoint.save_final": False, **dict(row.train)})
        settings = configs.to_dict(spec)
        if result_path.is_file():
            done = json.loads(result_path.read_text())
            # a result predating recorded settings is kept when its length matches (the only setting changed since)
            same = _outcome_settings(done.get("settings", settings)) == _outcome_settings(settings)
            if same and done["steps"] == steps:
                return done
            self.log(f"[study] seed {seed}: {row.name}: its settings changed since it ran, training it again")
        self.log(f"[study] seed {seed}: {row.name}")
        shutil.rmtree(run_dir, ignore_errors=True)
        run = train_run(spec, run_dir, self.data_dir, init_random=init.get("model_yaml"),
                        init_checkpoint=init.get("checkpoint"), teacher=self.teacher_ckpt if row.kd else None)
        cache = {"build_flops": 0.0, "served": 1}
        if row.teacher == "cache":
            cache = self.cache(row.cache, seed, run)
            run = section(run, **{"distill.teacher_source": "cache", "distill.cache": Path(cache["path"])})
        begin = time.perf_counter()
        result = train(run)
        if result.status != "completed":  # SIGTERM (a kill, a preemption): not a result, and the study stops
            raise StudyStopped(f"{row.name} seed {seed} stopped by SIGTERM at step {result.step} of {steps}; rerun "
                               "the same command to continue (finished runs are kept, this one trains again)")
        out = {"seed": seed, "steps": steps, "tokens": result.tokens, "curve": [list(point) for point in validation_curve(run_dir)],  # as JSON reads it back
               "test_ppl": result.final_metrics.get("test_ppl"), "wall_s": round(time.perf_counter() - begin, 2),
               "student_train_flops_per_token": student_fpt,
               "teacher_forward_flops_per_token": teacher_fpt if row.teacher == "online" else 0.0,
               "importance_flops": init["importance_flops"], "search_flops": init["search_flops"],
               "search_evaluations": init["evaluations"], "cache_flops": cache["build_flops"] / cache["served"],
               "student_parameters": _parameters(student), "hf_parameters": init["hf_parameters"],
               "settings": settings}
        _atomic_json(result_path, out)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # weights are not kept (resumed per run)
        return out


def _outcome_settings(settings: dict) -> dict:
    """The settings that decide a run's outcome: all but how it reports (a progress bar, TensorBoard)."""
    logging = {k: v for k, v in settings["logging"].items() if k not in ("progress", "tensorboard")}
    return {**settings, "logging": logging}


def _parameters(cfg) -> int:
    from nemo_subnet.models.counting import count_parameters

    return count_parameters(cfg)


def _exported_parameters(checkpoint: Path) -> int:
    """Parameters of the student's HF export (a layer-wise student is zero-padded to uniform layers there)."""
    from safetensors import safe_open

    from nemo_subnet.conversion.hf_export import export_hf

    with tempfile.TemporaryDirectory(dir=checkpoint.parent) as tmp:
        hf = export_hf(checkpoint, Path(tmp) / "hf")
        total = 0
        for path in hf.glob("*.safetensors"):
            with safe_open(path, "pt") as f:
                total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return total


def _first_k(subnet: dict) -> dict:
    """The same sizes as ``subnet`` with every index set replaced by its count (the first k units)."""
    def count(x):
        return len(x) if isinstance(x, list) and all(isinstance(i, int) for i in x) else x

    layer = subnet.get("layer")
    layers = [{k: count(v) for k, v in item.items()} for item in (layer if isinstance(layer, list) else [layer])]
    return {"hidden": count(subnet.get("hidden")), "layers": count(subnet.get("layers")),
            "layer": layers if isinstance(layer, list) else layers[0]}


def run_study(config: StudyConfig, *, rows: list[str] | None = None, log=print) -> dict[str, list[dict]]:
    """Every row (or the named ones) for every seed, by tier, then seed; returns {row: [per-seed results]}."""
    from nemo_subnet.runtime import runtime_scope

    study = Study(config, log)
    study.shared()  # child processes (the pipeline's stages), before this process has a runtime
    wanted = config.rows() if rows is None else [r for r in config.rows() if r.name in rows]
    results: dict[str, list[dict]] = {row.name: [] for row in wanted}
    with runtime_scope(tp=1, pp=1, seed=config.base.student_train.seed):  # one single-process runtime for every run
        for tier in sorted({row.tier for row in wanted}):
            for seed in config.seeds:
                for row in (r for r in wanted if r.tier == tier):
                    results[row.name].append(study.run_seed(row, seed))
    return {name: sorted(runs, key=lambda r: config.seeds.index(r["seed"])) for name, runs in results.items()}
