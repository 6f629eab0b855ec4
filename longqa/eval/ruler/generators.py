"""Which function generates each RULER task family (the family registry's second half).

Usage::

    from longqa.eval.ruler.generators import generator_for
    sample = generator_for("niah")(TASKS["niah_single_1"], 0, "0", ctx)

Kept apart from :mod:`longqa.eval.ruler.tasks` (specs and templates), which every generator
imports, so that imports run one way.
"""

from __future__ import annotations

from longqa.core.errors import LongqaError
from longqa.eval.ruler.common_words import generate as common_words
from longqa.eval.ruler.freq_words import generate as freq_words
from longqa.eval.ruler.niah import generate as niah
from longqa.eval.ruler.qa import generate as qa
from longqa.eval.ruler.tasks import Generator
from longqa.eval.ruler.variable_tracking import generate as variable_tracking

_GENERATORS: dict[str, Generator] = {
    "niah": niah,
    "variable_tracking": variable_tracking,
    "common_words": common_words,
    "freq_words": freq_words,
    "qa": qa,
}


def generator_for(family: str) -> Generator:
    """The generator function of a task family (registry lookup)."""
    if family not in _GENERATORS:
        known = ", ".join(_GENERATORS)
        raise LongqaError(f"unknown RULER family '{family}'; known: {known}")
    return _GENERATORS[family]
