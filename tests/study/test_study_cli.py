"""`nemo-subnet study` is the study's own CLI (the same arguments as `python -m nemo_subnet.study`)."""

from __future__ import annotations

from nemo_subnet.cli import main


def test_study_subcommand_refuses_an_unknown_row_by_name(capsys):
    assert main(["study", "--preset", "mini", "--rows", "random_ce", "no_such_row"]) == 2
    err = capsys.readouterr().err
    assert "unknown rows ['no_such_row']" in err and "random_ce_long" in err
