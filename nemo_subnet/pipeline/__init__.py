"""Stage pipeline shared by ``make demo`` and the NeMo-Run recipes: stages with reuse of finished outputs.

``run_pipeline_stage(config, stage)`` is what one NeMo-Run task runs; ``run_pipeline`` what the demo runs.
The config (config.py) is composed of the stages' own configs; kinds.py says where each stage runs.
"""

from nemo_subnet.pipeline.config import PipelineConfig, TeacherModel

__all__ = ["PipelineConfig", "TeacherModel", "run_pipeline_stage", "run_pipeline"]


def run_pipeline_stage(config: PipelineConfig, stage: str) -> dict:
    """Run one stage (skipped when already complete); the body of one NeMo-Run task.

    A stage stopped by SIGTERM ends the task with ``EXIT_PREEMPTED`` (75), not a traceback's 1: the stage is
    not finished, and a requeued or relaunched task resumes it.
    """
    from nemo_subnet.exit_codes import PREEMPTED as EXIT_PREEMPTED
    from nemo_subnet.pipeline.runner import StageInterrupted, run_stage
    from nemo_subnet.pipeline.stages import build_stages

    config = config.validate()
    try:
        return run_stage(config, build_stages(), stage)
    except StageInterrupted as err:
        print(f"pipeline: {err}", flush=True)
        raise SystemExit(EXIT_PREEMPTED) from None


def run_pipeline(config: PipelineConfig, stages: list[str] | None = None, *, log=print) -> dict:
    """Run stages in order in this process (all by default)."""
    from nemo_subnet.pipeline.runner import run_all
    from nemo_subnet.pipeline.stages import build_stages

    config = config.validate()
    return run_all(config, build_stages(), stages, log=log)
