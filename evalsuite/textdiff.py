"""Recognised text against expected text as an edit script, for showing an OCR miss at a glance.

The OCR reward scores by edit distance; :func:`text_diff` returns one minimal (Levenshtein) alignment of
the two strings, so the highlighted edits are exactly as many as that distance counts.
"""

from __future__ import annotations

__all__ = ["text_diff"]

Op = tuple[str, str]  # ("=", kept) | ("-", expected but missing) | ("+", recognised but not expected)


def text_diff(expected: str, recognized: str) -> list[Op]:
    """A minimal edit script turning ``expected`` into ``recognized``, each run of edits
    written as what is missing (``-``) then what came instead (``+``).

    Ties, walking back from the ends, prefer match or
    substitution, then deletion, then insertion: the script is deterministic, and a doubled or dropped
    letter is marked at its first copy ("HELLO" read as "HELO": ``HE``, ``-L``, ``LO``).
    """
    n, m = len(expected), len(recognized)
    dist = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        dist[i][0] = i
    for j in range(m + 1):
        dist[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            same = expected[i - 1] == recognized[j - 1]
            dist[i][j] = min(dist[i - 1][j - 1] + (0 if same else 1), dist[i - 1][j] + 1, dist[i][j - 1] + 1)
    ops: list[Op] = []
    i, j = n, m
    while i or j:
        if i and j and dist[i][j] == dist[i - 1][j - 1] + (expected[i - 1] != recognized[j - 1]):
            if expected[i - 1] == recognized[j - 1]:
                ops.append(("=", expected[i - 1]))
            else:
                ops += [("+", recognized[j - 1]), ("-", expected[i - 1])]  # reversed below
            i, j = i - 1, j - 1
        elif i and dist[i][j] == dist[i - 1][j] + 1:
            ops.append(("-", expected[i - 1]))
            i -= 1
        else:
            ops.append(("+", recognized[j - 1]))
            j -= 1
    out: list[Op] = []
    gone, added = "", ""
    for kind, text in [*reversed(ops), ("=", "")]:  # a run of edits reads as "-all" then "+all"
        if kind == "-":
            gone += text
        elif kind == "+":
            added += text
        else:
            out += [(k, t) for k, t in (("-", gone), ("+", added)) if t]
            gone, added = "", ""
            if text:
                out.append(("=", out.pop()[1] + text) if out and out[-1][0] == "=" else ("=", text))
    return out
