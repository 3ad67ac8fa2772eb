"""`nemo-subnet study` is the study's own CLI (the same arguments as `python -m nemo_subnet.study`)."""

from __future__ import annotations

from nemo_subnet.cli import main


def test_study_subcommand_refuses_an_unknown_row_by_name(capsys):
    assert main(["study", "--preset", "mini", "--rows", "random_ce", "no_such_row"]) == 2
    err = capsys.readouterr().err
    assert "unknown rows ['no_such_row']" in err and "random_ref" in err


def test_study_overrides_go_through_the_config_mechanism(capsys):
    """A dotted override of the StudyConfig is checked like any config, every problem at once, before any work."""
    assert main(["study", "--preset", "mini", "base.search.evaluationz=3", "long_factor=0"]) == 2
    err = capsys.readouterr().err
    assert "base.search.evaluationz: unknown key; did you mean evaluations?" in err
    assert "long_factor: 0 is out of range; allowed: >= 1" in err
