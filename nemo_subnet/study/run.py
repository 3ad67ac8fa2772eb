"""Run a study: shared data / teacher / importance (the pipeline's stages), one init per row kind, seeded runs.

Everything is the pipeline's own code and configs: ``run_pipeline`` makes ``base/{data,teacher,importance}``;
``run_search`` (the search command's function) runs the base config's ``search`` section, filled in like the
search stage's, per init (granularity, budget, strategy changed) on the search split (``stages.search_data``);
``extract_checkpoint`` slices them; ``train`` (the train command's function) runs each (row, seed) from the
``TrainConfig`` ``stages.train_run`` makes of ``base.student_train``, so every run measures valid from step 0 and
test once at its end.

Resumable per row: a row's results are written atomically to ``rows/<row>.json`` when all its seeds are done,
and a rerun skips rows that have one for the same seeds (a seed's own result, ``runs/<row>/seed<k>/result.json``,
is kept too, so asking for more seeds later trains only the new ones).

FLOPs (all per token x tokens; counted separately, summed only for compute-to-target):
- student fwd+bwd: ``search.objective.flops_per_token`` of the student's sub-network of the teacher (the one
  counter, models/counting.py: per-layer sizes of layer-wise students counted);
- teacher forward during KD: ``forward_flops_per_token`` of the full teacher;
- importance: what the importance stage recorded in its scores (``meta["flops"]``: the calibration pass,
  plus the layer-drop passes only when the layer metric needs them);
- search: what the search recorded in its summary.json (``flops``: every evaluation's executed forward
  FLOPs over its tokens, every fidelity rung, at the candidate's own size when evaluated compact).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from nemo_subnet.files import write_text_atomic
from nemo_subnet.pipeline.config import section
from nemo_subnet.study.config import Init, Row, StudyConfig


def _atomic_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=1))


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

    @property
    def data_dir(self) -> Path:
        return self.out / "base" / "data"

    def teacher_forward_flops(self, seq_length: int) -> float:
        """Forward FLOPs per token of the full teacher."""
        from nemo_subnet.models.counting import forward_flops_per_token

        return forward_flops_per_token(self.teacher_cfg, seq_length)

    def importance_flops(self) -> float:
        """As the importance stage recorded it (scores written before it recorded FLOPs: the calibration pass
        plus 1 + L layer-drop passes, what that stage ran then)."""
        from nemo_subnet.importance.scores import ImportanceScores

        meta = ImportanceScores.load(self.out / "base" / "importance" / "scores.safetensors").meta
        if "flops" in meta:
            return float(meta["flops"])
        imp = self.base.importance
        tokens = imp.batches * imp.micro_batch_size * imp.seq_length
        return (1 + self.teacher_cfg.num_layers + 1) * tokens * self.teacher_forward_flops(imp.seq_length)

    # --- inits ----------------------------------------------------------------------------------------
    def init(self, init: Init) -> dict:
        """{"checkpoint" or "model_yaml", "importance_flops", "search_flops", "evaluations", "subnet"}; cached."""
        directory = self.out / "inits" / init.name
        info_path = directory / "init.json"
        if info_path.is_file():
            return json.loads(info_path.read_text())
        if init.kind == "random":  # the shape of the main evolutionary student, random weights
            main = self.init(Init("evolutionary", init.granularity, init.budget))
            info = {"model_yaml": str(Path(main["checkpoint"]) / "model.yaml"), "importance_flops": 0.0,
                    "search_flops": 0.0, "evaluations": 0, "subnet": main["subnet"]}
            _atomic_json(info_path, info)
            return info
        from nemo_subnet.subnet.config import SubnetConfig
        from nemo_subnet.subnet.extract import extract_checkpoint

        if init.kind == "firstk":  # the importance pick's architecture, first k units of every dimension
            pick = self.init(Init("minitron", init.granularity, init.budget))
            subnet = _first_k(pick["subnet"])
            flops = {"importance_flops": 0.0, "search_flops": 0.0, "evaluations": 0}
        else:
            strategy, evaluations = {"minitron": ("proxy", 1), "random_search": ("random", None),
                                     "evolutionary": ("evolutionary", None)}[init.kind]
            subnet, flops = self._search(init, directory / "search", strategy, evaluations)
        if directory.joinpath("model").exists():
            shutil.rmtree(directory / "model")
        extract_checkpoint(self.teacher_ckpt, SubnetConfig.from_dict(subnet), directory / "model")
        info = {"checkpoint": str(directory / "model"), "subnet": subnet, **flops}
        _atomic_json(info_path, info)
        return info

    def _search(self, init: Init, out: Path, strategy: str, evaluations: int | None) -> tuple[dict, dict]:
        from nemo_subnet.pipeline.stages import search_data, teacher_checkpoint
        from nemo_subnet.search.runner import run_search

        s = self.base.search
        run_search(section(s, ckpt=teacher_checkpoint(self.out / "base"), data=search_data(self.out / "base"), out=out,
                           scores=self.out / "base" / "importance" / "scores.safetensors",
                           space=section(s.space, granularity=init.granularity),
                           budget=section(s.budget, target=init.budget), budgets=None, strategy=strategy,
                           evaluations=evaluations or s.evaluations, progress=False, plots=False, overwrite=True))
        summary = json.loads((out / "summary.json").read_text())
        return summary["best"]["subnet"], {"importance_flops": self.importance_flops(),
                                           "evaluations": summary["candidates"], "search_flops": summary["flops"]}

    # --- runs -----------------------------------------------------------------------------------------
    def run_seed(self, row: Row, init: dict, seed: int) -> dict:
        from nemo_subnet.pipeline.stages import train_run
        from nemo_subnet.search.objective import flops_per_token
        from nemo_subnet.subnet.config import SubnetConfig
        from nemo_subnet.training.loop import train
        from nemo_subnet.training.tokens_to_target import validation_curve

        run_dir = self.out / "runs" / row.name / f"seed{seed}"
        result_path = run_dir / "result.json"
        if result_path.is_file():
            return json.loads(result_path.read_text())
        shutil.rmtree(run_dir, ignore_errors=True)
        spec = self.base.student_train
        spec = section(spec, seed=seed, **{  # the data order varies with the seed too
            "schedule.train_steps": spec.schedule.train_steps * row.token_factor, "data.seed": seed,
            "distill.divergence": row.divergence, "distill.top_k": row.top_k, "logging.progress": False,
            "logging.tensorboard": False, "checkpoint.every_steps": 0, "checkpoint.keep_last": 1,
            "checkpoint.save_final": False})
        run = train_run(spec, run_dir, self.data_dir, init_random=init.get("model_yaml"),
                        init_checkpoint=init.get("checkpoint"), teacher=self.teacher_ckpt if row.kd else None)
        begin = time.perf_counter()
        result = train(run)
        seq = spec.data.seq_length
        student_fpt = flops_per_token(self.teacher_cfg, SubnetConfig.from_dict(init["subnet"]), seq)
        out = {"seed": seed, "tokens": result.tokens, "curve": validation_curve(run_dir),
               "test_ppl": result.final_metrics.get("test_ppl"), "wall_s": round(time.perf_counter() - begin, 2),
               "student_train_flops_per_token": student_fpt,
               "teacher_forward_flops_per_token": self.teacher_forward_flops(seq) if row.kd else 0.0}
        _atomic_json(result_path, out)
        return out

    def run_row(self, row: Row) -> dict:
        path = self.out / "rows" / f"{row.name}.json"
        if path.is_file():
            record = json.loads(path.read_text())
            if [s["seed"] for s in record["seeds"]] == list(self.config.seeds):
                return record
            # other seeds asked for than the row was run with: run the missing ones (finished seeds are read back)
        self.log(f"[study] row {row.name}")
        begin = time.perf_counter()
        init = self.init(row.init)
        seeds = [self.run_seed(row, init, seed) for seed in self.config.seeds]
        record = {"row": row.name, "group": row.group, "init": row.init.name, "kd": row.kd,
                  "divergence": row.divergence if row.kd else None, "top_k": row.top_k, "budget": row.init.budget,
                  "granularity": row.init.granularity, "token_factor": row.token_factor,
                  "importance_flops": init["importance_flops"], "search_flops": init["search_flops"],
                  "search_evaluations": init["evaluations"], "seeds": seeds,
                  "wall_s": round(time.perf_counter() - begin, 1)}
        _atomic_json(path, record)
        return json.loads(path.read_text())  # the same record a rerun reads back (tuples become lists)


def _first_k(subnet: dict) -> dict:
    """The same sizes as ``subnet`` with every index set replaced by its count (the first k units)."""
    def count(x):
        return len(x) if isinstance(x, list) and all(isinstance(i, int) for i in x) else x

    layer = subnet.get("layer")
    layers = [{k: count(v) for k, v in item.items()} for item in (layer if isinstance(layer, list) else [layer])]
    return {"hidden": count(subnet.get("hidden")), "layers": count(subnet.get("layers")),
            "layer": layers if isinstance(layer, list) else layers[0]}


def run_study(config: StudyConfig, *, rows: list[str] | None = None, log=print) -> list[dict]:
    """Every row (or the named ones) of the study; returns their records (done rows are read back)."""
    from nemo_subnet.runtime import runtime_scope

    study = Study(config, log)
    study.shared()  # child processes (the pipeline's stages), before this process has a runtime
    wanted = config.rows() if rows is None else [r for r in config.rows() if r.name in rows]
    with runtime_scope(tp=1, pp=1, seed=config.base.student_train.seed):  # one single-process runtime for every row
        return [study.run_row(row) for row in wanted]
