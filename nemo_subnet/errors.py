"""``UserError``: a bad input the user can fix, printed as one line without a traceback (exit code 2).

Its own module with no imports, so that every layer (data, training, search, the pipeline, the CLIs) can raise
it without importing the command line, and so that there is one class however a command is started
(``nemo-subnet``, ``python -m nemo_subnet.cli``, ``python nemo_subnet/cli.py`` under torchrun).
"""


class UserError(Exception):
    """A bad input the user can fix; the message names the cause and what is allowed."""
