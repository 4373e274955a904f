"""Top-k item retrieval restricted to chosen interest clusters.

One contract (`restricted_top_k`: each user's best items inside that user's
chosen clusters) with a dense reference, a cluster-contiguous path and Pallas
kernels, all behind `RestrictedRetriever` (see docs/retrieval.md).
"""

from explore.retrieval.cluster_layout import ClusterLayout
from explore.retrieval.cluster_layout import RetrievalInputError
from explore.retrieval.restricted import IMPLEMENTATIONS
from explore.retrieval.restricted import RestrictedRetriever
from explore.retrieval.restricted import restricted_top_k
from explore.retrieval.topk_ops import brute_force_top_k

__all__ = [
    "ClusterLayout",
    "IMPLEMENTATIONS",
    "RestrictedRetriever",
    "RetrievalInputError",
    "brute_force_top_k",
    "restricted_top_k",
]
