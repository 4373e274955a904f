"""Sequence recommender and item retrieval restricted to chosen interest clusters."""

from explore.seqrec.cluster_layout import ClusterLayout
from explore.seqrec.cluster_layout import RetrievalInputError
from explore.seqrec.retrieval import IMPLEMENTATIONS
from explore.seqrec.retrieval import RestrictedRetriever
from explore.seqrec.retrieval import restricted_top_k
from explore.seqrec.topk_ops import brute_force_top_k

__all__ = [
    "ClusterLayout",
    "IMPLEMENTATIONS",
    "RestrictedRetriever",
    "RetrievalInputError",
    "brute_force_top_k",
    "restricted_top_k",
]
