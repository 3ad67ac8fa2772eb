"""``python -m nemo_subnet.study [--preset smollm2|mini] [--out DIR] [--seeds 1 2 3] [--rows NAME ...] [--report-only]
[KEY=VALUE ...]``.

The preset is a ``StudyConfig``; ``--out``, ``--seeds`` and dotted ``KEY=VALUE`` overrides
(``base.search.evaluations=8``) change it through the one config mechanism, checked before anything runs.
Every run is resumable: rerunning the same command continues where it stopped. ``--report-only`` writes the
report from the runs finished so far without training (while a study is running, or cut short).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nemo_subnet.study.config import PRESETS

    parser.add_argument("--preset", choices=sorted(PRESETS), default="smollm2")
    parser.add_argument("--out", help="study directory (default: the preset's)")
    parser.add_argument("--results", type=Path, help="where study.csv/.md/.png go (default: <out>/report)")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: the preset's)")
    parser.add_argument("--rows", nargs="+", help="only these rows (default: all)")
    parser.add_argument("--report-only", action="store_true", help="write the report from the finished runs, train nothing")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides of the StudyConfig, values parsed as YAML (base.search.evaluations=8)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nemo_subnet.study", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from nemo_subnet.study.config import PRESETS

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from nemo_subnet import config as configs
    from nemo_subnet.errors import UserError
    from nemo_subnet.study.report import REFERENCE, collect, write_report
    from nemo_subnet.exit_codes import PREEMPTED
    from nemo_subnet.study.run import StudyStopped, run_study

    changes = {k: v for k, v in (("out_dir", args.out), ("seeds", args.seeds)) if v}
    try:
        config = configs.updated(PRESETS[args.preset](), changes)
        config = configs.from_dict(type(config), configs.apply_overrides(configs.to_dict(config), args.overrides or ()))
    except UserError as err:
        print(f"study: error: {err}", file=sys.stderr)
        return 2
    known = [r.name for r in config.rows()]
    if args.rows and set(args.rows) - set(known):
        print(f"study: error: unknown rows {sorted(set(args.rows) - set(known))}; rows: {', '.join(known)}",
              file=sys.stderr)
        return 2
    begin = time.perf_counter()
    if not args.report_only:
        try:
            run_study(config, rows=args.rows)
        except UserError as err:
            print(f"study: error: {err}", file=sys.stderr)
            return 2
        except StudyStopped as stop:
            print(f"study: {stop}", file=sys.stderr)
            return PREEMPTED
    results = collect(Path(config.out_dir), config.rows(), config.seeds)
    if not results.get(REFERENCE):
        print(f"study: no seed of the reference row {REFERENCE} has finished: no target, no report yet")
        return 0
    out = args.results or Path(config.out_dir) / "report"
    summary = write_report(config, results, out)
    print(f"study: {len(summary['per_seed'])} runs reported ({(time.perf_counter() - begin) / 60:.1f} min this "
          f"call) -> {out / 'study.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
