"""One stage command as a child process: its stderr kept for the error line, SIGTERM passed on, exit code read.

A stage runs ``nemo-subnet`` commands as children, so two things must cross the process boundary:

- **the child's own error**: its stderr is copied through to ours line by line (the task log stays complete)
  and its tail is kept, so a failure is reported as the child's one-line error (a ``UserError`` line, or the
  last line of a traceback) instead of "exited 2";
- **SIGTERM**: the scheduler (or torchrun, which signals only its direct workers) may signal the stage's
  process but not the child; we forward it, then keep waiting, so a training child can checkpoint and exit
  ``EXIT_PREEMPTED`` rather than being orphaned and killed mid-save.
"""

from __future__ import annotations

import collections
import re
import signal
import subprocess
import sys
import threading

from nemo_subnet.exit_codes import PREEMPTED as EXIT_PREEMPTED

_USER_ERROR = re.compile(r"^(nemo-subnet|python -m \S+|pipeline)[\w\- ]*: error: ")
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Failure)\b:?")
_KEEP_LINES = 200


def error_line(lines: list[str]) -> str | None:
    """The line that says what went wrong: the last ``<prog>: error: ...`` line (our UserError / argparse
    format), else the last exception line of a traceback, else None."""
    stripped = [line.rstrip() for line in lines if line.strip()]
    for line in reversed(stripped):
        if _USER_ERROR.match(line):
            return line
    if any(line.startswith("Traceback (most recent call last)") for line in stripped):
        for line in reversed(stripped):
            if _EXCEPTION.match(line):
                return line
    return None


def interrupted(returncode: int) -> bool:
    """Stopped by SIGTERM: checkpointed and exited EXIT_PREEMPTED, or killed by the signal (-15 / 143)."""
    return returncode in (EXIT_PREEMPTED, -signal.SIGTERM, 128 + signal.SIGTERM)


class ChildResult:
    def __init__(self, returncode: int, stderr_tail: list[str], got_sigterm: bool):
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        self.got_sigterm = got_sigterm
        """This process received SIGTERM while the child ran (and passed it on)."""


def run_child(cmd: list[str], env: dict) -> ChildResult:
    """Run ``cmd`` to completion; stderr copied to ours and its tail kept; SIGTERM forwarded to the child."""
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1)
    tail: collections.deque[str] = collections.deque(maxlen=_KEEP_LINES)

    def copy() -> None:
        for line in proc.stderr:
            tail.append(line)
            sys.stderr.write(line)
            sys.stderr.flush()

    reader = threading.Thread(target=copy, daemon=True)
    reader.start()
    got_sigterm = False

    def forward(signum, frame):
        nonlocal got_sigterm
        got_sigterm = True
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    # signal handlers can only be set from the main thread (stages called from a worker thread just don't forward)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, forward) if in_main else None
    try:
        returncode = proc.wait()
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    reader.join(timeout=10)
    return ChildResult(returncode, list(tail), got_sigterm)
