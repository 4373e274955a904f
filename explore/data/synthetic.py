"""The synthetic platform: the embedded default dataset and the simulator's world.

A hidden topic tree with made-up vocabulary, a cross-topic affinity graph whose
topics share "bridge" words, items with power-law popularity, users with known and
hidden interests, and chronological logs in which users discover hidden interests
through affine topics. See docs/synthetic.md for how and why it is built this way.

  world, interactions, catalog = synthetic.generate(SyntheticConfig(num_users=300))

Parts (one concept per module): `synthetic_config` (the knobs), `synthetic_topics`
(tree, words, affinity), `synthetic_world` (ground truth and enjoyment),
`synthetic_logs` (sessions, streamed in user chunks), `synthetic_catalog` (item text).
"""

from __future__ import annotations

import gin

from explore.data.schema import Interactions, ItemCatalog
from explore.data.synthetic_catalog import TEXT_FIELD, item_catalog
from explore.data.synthetic_config import SyntheticConfig, SyntheticConfigError
from explore.data.synthetic_logs import concatenate_chunks, iter_interaction_chunks
from explore.data.synthetic_topics import TopicTree, TopicVocabulary
from explore.data.synthetic_world import SyntheticWorld, build_world

__all__ = [
    "SyntheticConfig", "SyntheticConfigError", "SyntheticWorld", "TopicTree", "TopicVocabulary",
    "TEXT_FIELD", "build_world", "concatenate_chunks", "generate", "item_catalog",
    "iter_interaction_chunks",
]


@gin.configurable(module="synthetic")
def generate(config: SyntheticConfig | None = None
             ) -> tuple[SyntheticWorld, Interactions, ItemCatalog]:
  """Builds the world, its full logs and its catalog (the default embedded dataset).

  Uses the same block simulation as `iter_interaction_chunks`, so the logs equal the
  concatenation of any chunking of them.
  """
  config = SyntheticConfig() if config is None else config
  world = build_world(config)
  interactions = concatenate_chunks(iter_interaction_chunks(world, config.block_users))
  return world, interactions, item_catalog(world)
