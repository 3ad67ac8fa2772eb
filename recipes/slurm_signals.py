"""SLURM batch-script lines that make preemption, requeue and the time limit end in a checkpoint, not a kill.

The jobs are submitted with ``--requeue`` and ``--signal=B:USR1@<grace>``. Three ways a job gets stopped:

- **time limit**: ``<grace>`` seconds before it, SLURM sends USR1 to the batch shell only (``B:``). A distinct
  signal, not TERM, because TERM also means "cancelled" (``scancel``), which must not requeue. The trap sends
  SIGTERM to every process of every step (``scancel --signal=TERM $SLURM_JOB_ID``: all nodes, the batch shell
  excluded), the ranks save a checkpoint and exit 75, and then — for a resumable stage — the job requeues
  itself (``scontrol requeue``) and resumes from that checkpoint.
- **preemption / ``scontrol requeue``**: SLURM signals every process with SIGTERM itself and requeues the job
  (``--requeue``); the trap passes TERM on as well and keeps the batch shell alive until the step has exited,
  so the checkpoint is not cut short by the job's end.
- **``scancel``**: the same TERM, no requeue.

Bash runs no trap while a foreground command runs, so the stage's ``srun`` must run in the background with the
shell in ``wait``. NeMo-Run's batch template runs it in the foreground and has no hook around it, so these
lines (NeMo-Run's ``setup_lines``, just before the stage's ``srun``) define a shell function ``srun`` that does
exactly that around the real ``command srun``. The plain templates in ``launch/sbatch`` ``eval`` the same
lines: ``eval "$(python -m nemo_subnet.recipes.slurm_signals --stage teacher)"``.
"""

from __future__ import annotations

import argparse
import sys

_LINES = r"""
# --- nemo-subnet: SIGTERM reaches the ranks; at the time limit a resumable stage requeues itself ----------
# (nemo_subnet/recipes/slurm_signals.py)
nemo_subnet_requeue_on_time_limit=%(requeue)d
nemo_subnet_time_limit=0
nemo_subnet_terminated=0
nemo_subnet_term_ranks() { scancel --signal=TERM "$SLURM_JOB_ID" 2>/dev/null || true; }
trap 'echo "nemo-subnet: time limit in sight (USR1): SIGTERM to the ranks, they checkpoint"; nemo_subnet_time_limit=1; nemo_subnet_term_ranks' USR1
trap 'echo "nemo-subnet: SIGTERM: passed on to the ranks"; nemo_subnet_terminated=1; nemo_subnet_term_ranks' TERM
nemo_subnet_maybe_requeue() {
  if [[ "$nemo_subnet_time_limit" == 1 && "$nemo_subnet_requeue_on_time_limit" == 1 ]]; then
    echo "nemo-subnet: requeueing job $SLURM_JOB_ID; it resumes from the checkpoint just saved"
    scontrol requeue "$SLURM_JOB_ID"
  fi
}
srun() {  # the real srun in the background, so the traps above run while it does
  if [[ "$nemo_subnet_terminated" == 1 || "$nemo_subnet_time_limit" == 1 ]]; then nemo_subnet_maybe_requeue; return 75; fi
  command srun "$@" &
  local pid=$! rc
  while true; do wait "$pid"; rc=$?; kill -0 "$pid" 2>/dev/null || break; done
  nemo_subnet_maybe_requeue
  return "$rc"
}
# ---------------------------------------------------------------------------------------------------------
"""


def signal_setup_lines(*, requeue_on_time_limit: bool) -> str:
    """The bash lines (see the module docstring); ``requeue_on_time_limit`` for resumable stages only, or a
    stage that cannot resume would restart from scratch at every time limit, forever."""
    return _LINES % {"requeue": int(requeue_on_time_limit)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nemo_subnet.recipes.slurm_signals",
                                     description="print the batch-script signal lines (eval them in an sbatch script)")
    parser.add_argument("--stage", help="requeue at the time limit iff this pipeline stage is resumable")
    parser.add_argument("--requeue-on-time-limit", action="store_true", help="requeue at the time limit regardless")
    args = parser.parse_args(argv)
    requeue = args.requeue_on_time_limit
    if args.stage:
        from nemo_subnet.pipeline.stages import build_stages

        stages = build_stages()
        if args.stage not in stages:
            print(f"slurm_signals: unknown stage {args.stage!r}; stages: {', '.join(stages)}", file=sys.stderr)
            return 2
        requeue = requeue or stages[args.stage].resumable
    sys.stdout.write(signal_setup_lines(requeue_on_time_limit=requeue))
    return 0


if __name__ == "__main__":
    sys.exit(main())
