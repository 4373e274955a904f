"""Item titles and keyword text of the synthetic platform, drawn from the topic vocabulary.

Each word of an item is drawn from one of three sources, with `config.keyword_shares`:
the leaf topic's own words, the bridge words of the affinity edges touching the leaf,
or the words of its ancestors (the parent most, halving per level up). Within a node,
words follow a Zipf law, so every topic has a dominant word a description can show.
Text is generated in fixed blocks of items, each with its own random stream, so any
item range can be produced alone (O(range) memory) and always reads the same.
"""

from __future__ import annotations

import numpy as np

from explore.data import synthetic_sampling as sampling
from explore.data.schema import ItemCatalog
from explore.data.synthetic_world import SyntheticWorld

_TEXT_STREAM = 4
_TEXT_BLOCK = 65_536  # items per random stream
TEXT_FIELD = "keywords"


def _source_probabilities(world: SyntheticWorld) -> np.ndarray:
  """[2 + levels - 1]: P(own), P(bridge), then P(ancestor) from the parent up to the root."""
  own, bridge, ancestors = world.config.keyword_shares
  levels_up = world.topic_tree.num_levels - 1
  decay = 0.5 ** np.arange(levels_up)
  p = np.concatenate([[own, bridge], ancestors * decay / decay.sum()])
  return p / p.sum()


def _block_word_ids(world: SyntheticWorld, lo: int, hi: int) -> np.ndarray:
  """[hi - lo, title_words + keywords_per_item] int32 word ids of items [lo, hi) of one block."""
  c, tree, vocab = world.config, world.topic_tree, world.vocabulary
  rng = np.random.default_rng([c.seed, _TEXT_STREAM, lo // _TEXT_BLOCK])
  topics = world.item_topic[lo:hi]  # [n]
  shape = (hi - lo, c.title_words + c.keywords_per_item)
  cdf = np.cumsum(_source_probabilities(world))
  source = np.minimum(np.searchsorted(cdf, rng.random(shape) * cdf[-1], side="right"),
                      len(cdf) - 1)  # [n, words] 0 own, 1 bridge, 2.. ancestors
  rank = sampling.zipf_rank(rng.random(shape), c.words_per_topic, 1.0)  # [n, words]
  bridge_u = rng.random(shape)  # [n, words]
  ids = vocab.node_words[-1][topics[:, None], rank]  # [n, words] own words by default
  for k, level in enumerate(range(tree.num_levels - 2, -1, -1)):
    node = tree.ancestors(level)[topics]  # [n]
    use = source == 2 + k
    ids[use] = vocab.node_words[level][np.broadcast_to(node[:, None], shape)[use], rank[use]]
  offsets, pool = vocab.leaf_bridge_pool(world.affinity)
  start = offsets[topics][:, None]  # [n, 1]
  size = (offsets[topics + 1] - offsets[topics])[:, None]  # [n, 1]
  use = (source == 1) & (size > 0)
  pick = start + np.floor(bridge_u * size).astype(np.int64)  # [n, words]
  ids[use] = pool[pick[use]]
  return ids


def item_catalog(world: SyntheticWorld, start: int = 0, stop: int | None = None) -> ItemCatalog:
  """The catalog of items [start, stop): a title and a "keywords" text field per item.

  Row i describes item start + i; with the defaults this is the whole catalog, indexed
  like `Interactions.item`.
  """
  stop = world.num_items if stop is None else stop
  if not 0 <= start <= stop <= world.num_items:
    raise ValueError(f"item_catalog: item range [{start}, {stop}) is not inside "
                     f"[0, {world.num_items})")
  title_words = world.config.title_words
  titles: list[str] = []
  keywords: list[str] = []
  for block_lo in range((start // _TEXT_BLOCK) * _TEXT_BLOCK, stop, _TEXT_BLOCK):
    block_hi = min(block_lo + _TEXT_BLOCK, world.num_items)
    words = world.vocabulary.words[_block_word_ids(world, block_lo, block_hi)].tolist()
    for row in words[max(start, block_lo) - block_lo:min(stop, block_hi) - block_lo]:
      titles.append(" ".join(dict.fromkeys(w.capitalize() for w in row[:title_words])))
      keywords.append(" ".join(dict.fromkeys(row[title_words:])))
  return ItemCatalog(item_ids=world.item_ids[start:stop], title=np.array(titles, dtype=str),
                     text={TEXT_FIELD: np.array(keywords, dtype=str)})
