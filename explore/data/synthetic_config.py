"""`SyntheticConfig`: every knob of the synthetic platform, checked when it is built."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import gin


class SyntheticConfigError(ValueError):
  """A `SyntheticConfig` field has a value the generator cannot use."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """The synthetic platform: topic tree, items, users and their logs, all from `seed`.

  The defaults make the embedded CPU dataset: 256 leaf topics (8 x 8 x 4), 20,000
  items, 5,000 users with 50-150 events each, built in a few seconds.
  """

  seed: int = 0
  num_users: int = 5_000
  num_items: int = 20_000
  # Topic tree: nodes per parent at each level (roots first); at least 3 levels.
  branching: tuple[int, ...] = (8, 8, 4)
  words_per_topic: int = 4  # made-up words owned by every tree node
  # Hidden affinity graph over leaves: out-degree, share of targets under another root,
  # and the bridge words each edge adds to both ends' item text (0 hides the affinity).
  affinity_degree: int = 3
  affinity_cross_branch: float = 0.8
  bridge_words: int = 1
  # Popularity: Zipf exponents of leaf topics by rank and of items by rank in a topic.
  topic_zipf: float = 0.8
  item_zipf: float = 1.0
  item_quality_std: float = 0.1  # item effect on the expected watch fraction
  # Users: how many known (core) and not yet discovered (hidden) interests, [min, max];
  # hidden ones come from the affinity graph with this probability, else a tree sibling.
  core_interests: tuple[int, int] = (1, 3)
  hidden_interests: tuple[int, int] = (2, 4)
  hidden_from_affinity: float = 0.8
  interest_strength: tuple[float, float] = (0.5, 0.9)  # expected watch fraction on an interest
  base_enjoyment: float = 0.15  # expected watch fraction on any other topic
  engagement_concentration: float = 8.0  # Beta(m k, (1 - m) k) noise around the expectation
  positive_threshold: float = 0.5  # watch fraction at or above which an event is positive
  # Logs: events per user [min, max] (log-uniform), mean events per session, the chance an
  # event explores a random (popular) topic, and the chance that enjoying a known interest
  # leads on to one of the hidden interests it is the source of.
  events_per_user: tuple[int, int] = (50, 150)
  session_length: float = 8.0
  explore_rate: float = 0.08
  discovery_rate: float = 0.03
  # Time: users join uniformly over `start_spread_days` from `start_time` (unix seconds);
  # gaps are exponential with these means between sessions and between events of a session.
  start_time: int = 1_600_000_000
  start_spread_days: float = 365.0
  session_gap_hours: float = 30.0
  event_gap_seconds: float = 240.0
  # Users are simulated in blocks of this many (part of the randomness: changing it changes
  # the logs; the chunk size of `iter_interaction_chunks` does not).
  block_users: int = 2048
  # Catalog text: words per title and keywords per item; shares of keywords taken from the
  # leaf's own words, its bridge words and its ancestors' words.
  title_words: int = 3
  keywords_per_item: int = 8
  keyword_shares: tuple[float, float, float] = (0.4, 0.25, 0.35)

  def __post_init__(self):
    for name in ("branching", "core_interests", "hidden_interests", "interest_strength",
                 "events_per_user", "keyword_shares"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    _check(self)

  @property
  def num_leaves(self) -> int:
    return math.prod(self.branching)

  def to_json(self) -> dict[str, Any]:
    return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in dataclasses.fields(self)}

  @classmethod
  def from_json(cls, fields: Mapping[str, Any]) -> SyntheticConfig:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
      raise SyntheticConfigError(f"SyntheticConfig: unknown fields {unknown}")
    return cls(**fields)


def _fail(field: str, requirement: str, value: Any) -> None:
  raise SyntheticConfigError(f"SyntheticConfig.{field} {requirement}, got {value!r}")


def _check_range(c: SyntheticConfig, field: str, lo: float, hi: float = math.inf) -> None:
  value = getattr(c, field)
  if not (isinstance(value, (int, float)) and lo <= value <= hi):
    _fail(field, f"must be a number in [{lo}, {hi}]" if hi < math.inf else
          f"must be a number >= {lo}", value)


def _check_pair(c: SyntheticConfig, field: str, lo: float, hi: float = math.inf) -> None:
  value = getattr(c, field)
  if (len(value) != 2 or not all(isinstance(v, (int, float)) for v in value)
      or not lo <= value[0] <= value[1] <= hi):
    bound = f" <= {hi}" if hi < math.inf else ""
    _fail(field, f"must be a pair (min, max) with {lo} <= min <= max{bound}", value)


def _check(c: SyntheticConfig) -> None:
  if len(c.branching) < 3 or any(int(b) != b or b < 1 for b in c.branching):
    _fail("branching", "must list >= 3 levels, each with >= 1 child per node", c.branching)
  leaves = c.num_leaves
  if leaves < 2:
    _fail("branching", "must give >= 2 leaf topics", c.branching)
  for field in ("num_users", "words_per_topic", "block_users", "title_words",
                "keywords_per_item", "start_time"):
    _check_range(c, field, 1 if field != "start_time" else 0)
  _check_range(c, "num_items", leaves)  # every leaf topic has at least one item
  _check_range(c, "affinity_degree", 1, leaves - 1)
  _check_range(c, "bridge_words", 0)
  for field in ("affinity_cross_branch", "hidden_from_affinity", "base_enjoyment",
                "positive_threshold", "explore_rate", "discovery_rate"):
    _check_range(c, field, 0.0, 1.0)
  for field in ("topic_zipf", "item_zipf", "item_quality_std", "start_spread_days"):
    _check_range(c, field, 0.0)
  for field in ("engagement_concentration", "session_gap_hours", "event_gap_seconds"):
    if not (isinstance(getattr(c, field), (int, float)) and getattr(c, field) > 0):
      _fail(field, "must be > 0", getattr(c, field))
  _check_range(c, "session_length", 1.0)
  _check_pair(c, "core_interests", 1, leaves)
  _check_pair(c, "hidden_interests", 0, leaves)
  _check_pair(c, "interest_strength", 0.0, 1.0)
  _check_pair(c, "events_per_user", 1)
  if len(c.keyword_shares) != 3 or min(c.keyword_shares) < 0 or sum(c.keyword_shares) <= 0:
    _fail("keyword_shares", "must be 3 non-negative shares (own, bridge, ancestors) with a "
          "positive sum", c.keyword_shares)
