"""Tracing sampled sequences back to documents: the EOD-free pieces of a token sequence, as text to search."""

from __future__ import annotations


def eod_pieces(sequence: list[int], eod: int) -> list[list[int]]:
    """The runs of ``sequence`` between EOD tokens (possibly empty)."""
    pieces, current = [], []
    for token in sequence:
        if token == eod:
            pieces.append(current)
            current = []
        else:
            current.append(token)
    pieces.append(current)
    return pieces


def as_text(tokens: list[int]) -> str:
    """Space-delimited ids, so that one piece is in a document's text only as a contiguous run of whole ids."""
    return " " + " ".join(map(str, tokens)) + " "
