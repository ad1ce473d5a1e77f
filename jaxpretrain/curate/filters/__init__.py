"""Document filters: each scores a document (threshold-free) and then decides with thresholds.

    from jaxpretrain.curate import filters
    names = ["language", "gopher_repetition", "gopher_quality", "c4", "fineweb"]  # FineWeb's
    chain = [filters.get(name) for name in names]
    result = filters.apply_filters(doc, chain)   # result.kept, result.reason, result.scores
    filters.decide(result.scores, retuned_chain)  # re-decide from stored scores, no recompute

Importing this package registers the built-in filters.
"""

from jaxpretrain.curate.filters.base import (
    Filter,
    FilterResult,
    Scores,
    apply_filters,
    decide,
    get,
    register,
    registered_names,
)
from jaxpretrain.curate.filters.blocklist import BlocklistFilter
from jaxpretrain.curate.filters.c4 import C4Quality, C4TfdsQuality
from jaxpretrain.curate.filters.code import CodeQuality
from jaxpretrain.curate.filters.decontaminate import Decontaminate
from jaxpretrain.curate.filters.fineweb import FineWebQuality
from jaxpretrain.curate.filters.gopher import GopherQuality, GopherRepetition
from jaxpretrain.curate.filters.language import LanguageFilter
from jaxpretrain.curate.filters.length import LengthFilter
from jaxpretrain.curate.filters.perplexity import PerplexityFilter

__all__ = [
    "BlocklistFilter",
    "C4Quality",
    "C4TfdsQuality",
    "CodeQuality",
    "Decontaminate",
    "Filter",
    "FilterResult",
    "FineWebQuality",
    "GopherQuality",
    "GopherRepetition",
    "LanguageFilter",
    "LengthFilter",
    "PerplexityFilter",
    "Scores",
    "apply_filters",
    "decide",
    "get",
    "register",
    "registered_names",
]
