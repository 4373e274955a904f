"""Interest clusters: item embeddings, the balanced cluster tree, quality reports."""

from explore.clusters.balanced_kmeans import BalancedKMeansResult
from explore.clusters.balanced_kmeans import ClusteringError
from explore.clusters.balanced_kmeans import balanced_kmeans
from explore.clusters.embeddings import EmbeddingError
from explore.clusters.embeddings import ItemEmbeddings
from explore.clusters.embeddings import co_engagement_counts
from explore.clusters.embeddings import co_engagement_embeddings
from explore.clusters.embeddings import randomized_svd
from explore.clusters.embeddings import shifted_ppmi
from explore.clusters.quality import QualityError
from explore.clusters.quality import adjusted_mutual_info
from explore.clusters.quality import coherence
from explore.clusters.quality import intra_cluster_cosine
from explore.clusters.quality import pairs_inside
from explore.clusters.quality import tree_quality
from explore.clusters.tree import ClusterTree
from explore.clusters.tree import ClusterTreeError
from explore.clusters.tree import build_cluster_tree
