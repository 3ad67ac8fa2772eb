"""Exit codes shared by the commands and the launchers that read them (no imports: stage runners load this).

``PREEMPTED`` (75, sysexits' EX_TEMPFAIL, "temporary failure, retry"): a run stopped on SIGTERM *after saving a
checkpoint*. It is not finished, so it must never read as success (0: a pipeline would take the truncated run as
done), and it is not 143, what a shell reports for a process *killed* by SIGTERM that saved nothing. Launching
it again with ``--resume`` (the pipeline does) continues from that checkpoint.
"""

OK = 0
USER_ERROR = 2
"""Bad input, printed as one line (``nemo_subnet.errors.UserError``)."""
PREEMPTED = 75
