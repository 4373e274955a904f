"""The sequence recommender: its model, training, item vectors and grounding.

Retrieval restricted to chosen clusters lives in `explore.retrieval`.
"""

from explore.seqrec.data import encode_histories
from explore.seqrec.data import leave_last_out
from explore.seqrec.data import user_sequences
from explore.seqrec.evaluation import ranking_metrics
from explore.seqrec.evaluation import target_ranks
from explore.seqrec.grounding import grounding_cases
from explore.seqrec.grounding import grounding_metrics
from explore.seqrec.grounding import tune_prior_weight
from explore.seqrec.model import SeqRecConfig
from explore.seqrec.model import SeqRecModel
from explore.seqrec.model import build_model
from explore.seqrec.task import SeqRecTask
from explore.seqrec.task import SoftmaxConfig
from explore.seqrec.training import SeqRecTraining
from explore.seqrec.training import fit
from explore.seqrec.vectors import SeqRecVectors
from explore.seqrec.vectors import popularity_prior
from explore.seqrec.vectors import with_prior

__all__ = [
    "SeqRecConfig", "SeqRecModel", "SeqRecTask", "SeqRecTraining", "SeqRecVectors",
    "SoftmaxConfig", "build_model", "encode_histories", "fit", "grounding_cases",
    "grounding_metrics", "leave_last_out", "popularity_prior",
    "ranking_metrics", "target_ranks", "tune_prior_weight", "user_sequences", "with_prior",
]
