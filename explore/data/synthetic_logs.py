"""Chronological engagement logs of the synthetic platform, streamed in user chunks.

Each user lives through `user_events` events grouped in sessions. An event mostly
picks one of the user's known interests (by strength); with `explore_rate` it
explores a random popular topic, which is rarely enjoyed. Enjoying a known interest
may lead on (with `discovery_rate`) to a hidden interest that it is the source of,
on the very next event: hidden interests are discovered through their affine or
sibling topics, and once enjoyed they join the known set. Engagement is a watch
fraction drawn around the world's expected enjoyment; `positive` thresholds it.

Users are simulated in blocks of `config.block_users`, vectorised over the block with
one random stream per block, so any chunking of the users yields the same rows.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator

import numpy as np

from explore.data.schema import Interactions
from explore.data.synthetic_world import SyntheticWorld

_LOG_STREAM = 3


@dataclasses.dataclass(frozen=True)
class _LogBlock:
  """The rows of users [first_user, first_user + len(offsets) - 1), sorted by user then time."""

  first_user: int
  offsets: np.ndarray  # [block_users + 1] int64 row offsets per user
  item: np.ndarray  # [rows] int32
  timestamp: np.ndarray  # [rows] int64
  engagement: np.ndarray  # [rows] float32
  positive: np.ndarray  # [rows] bool

  def rows(self, lo_user: int, hi_user: int) -> tuple[np.ndarray, slice]:
    """(world user index per row, row slice) for users [lo_user, hi_user) of this block."""
    offsets = self.offsets[lo_user - self.first_user:hi_user - self.first_user + 1]
    users = np.repeat(np.arange(lo_user, hi_user), np.diff(offsets))
    return users, slice(int(offsets[0]), int(offsets[-1]))


def _simulate_block(world: SyntheticWorld, block: int) -> _LogBlock:
  """Runs every user of one block through their events, one vectorised step per event index."""
  c = world.config
  rng = np.random.default_rng([c.seed, _LOG_STREAM, block])
  lo = block * c.block_users
  hi = min(lo + c.block_users, world.num_users)
  n = hi - lo
  rows = np.arange(n)
  topics = world.interest_topic[lo:hi]  # [n, slots]
  strength = world.interest_strength[lo:hi]  # [n, slots]
  source = world.interest_source[lo:hi]  # [n, slots]
  valid = topics >= 0  # [n, slots]
  known = np.arange(topics.shape[1])[None, :] < world.num_core[lo:hi, None]  # [n, slots]
  num_events = world.user_events[lo:hi]  # [n]
  steps = int(num_events.max())
  now = world.user_start[lo:hi].copy()  # [n] int64
  pending = np.full(n, -1)  # [n] hidden slot to discover at the next event, or -1
  session_gap = c.session_gap_hours * 3600.0
  out_item = np.empty((n, steps), np.int32)
  out_time = np.empty((n, steps), np.int64)
  out_watch = np.empty((n, steps), np.float32)
  out_positive = np.empty((n, steps), bool)

  for t in range(steps):
    new_session = rng.random(n) < 1.0 / c.session_length  # [n]
    gap = rng.exponential(1.0, n) * np.where(new_session, session_gap, c.event_gap_seconds)
    now += np.maximum(1, np.round(gap)).astype(np.int64)  # strictly increasing per user
    # The next topic: a pending discovery, else a known interest by strength, or exploration.
    cum = np.cumsum(strength * known, axis=1)  # [n, slots]
    pick = (cum > rng.random(n)[:, None] * cum[:, -1:]).argmax(axis=1)  # [n]
    slot = np.where(pending >= 0, pending, pick)  # [n]
    topic = topics[rows, slot]  # [n]
    explore = (pending < 0) & (rng.random(n) < c.explore_rate)  # [n]
    explore_quantile = rng.random(n)  # [n]
    topic[explore] = world.popular_topics(explore_quantile[explore])
    item = world.sample_items(topic, rng)  # [n]
    hit = valid & (topics == topic[:, None])  # [n, slots]
    level = np.where(hit.any(axis=1), (strength * hit).max(axis=1), c.base_enjoyment)  # [n]
    watch, positive = world.draw_engagement(world.expected_watch(level, item), rng)  # [n], [n]
    # An enjoyed interest becomes known; it may lead to a hidden interest it is the source of.
    hit_slot = np.where(hit.any(axis=1) & positive, hit.argmax(axis=1), -1)  # [n]
    enjoyed = hit_slot >= 0
    known[rows[enjoyed], hit_slot[enjoyed]] = True
    lead = (valid & ~known & (source == hit_slot[:, None]) & enjoyed[:, None]
            & (rng.random(topics.shape) < c.discovery_rate))  # [n, slots]
    pending = np.where(lead.any(axis=1), lead.argmax(axis=1), -1)
    out_item[:, t], out_time[:, t] = item, now
    out_watch[:, t], out_positive[:, t] = watch, positive

  active = np.arange(steps)[None, :] < num_events[:, None]  # [n, steps]
  offsets = np.concatenate([[0], np.cumsum(num_events, dtype=np.int64)])
  return _LogBlock(first_user=lo, offsets=offsets, item=out_item[active],
                   timestamp=out_time[active], engagement=out_watch[active],
                   positive=out_positive[active])


def iter_interaction_chunks(world: SyntheticWorld, chunk_users: int) -> Iterator[Interactions]:
  """Yields the logs as `Interactions`, `chunk_users` users at a time, in user order.

  Chunk i holds users [i * chunk_users, (i + 1) * chunk_users): its dense `user` column
  counts from 0 within the chunk and its `user_ids` are that contiguous range of world
  user ids; `item_ids` are all the world's items. Memory is O(items + block + chunk);
  the rows do not depend on `chunk_users`.
  """
  if not isinstance(chunk_users, (int, np.integer)) or chunk_users < 1:
    raise ValueError(f"iter_interaction_chunks: chunk_users must be an integer >= 1, "
                     f"got {chunk_users!r}")
  block_users = world.config.block_users
  cached: tuple[int, _LogBlock] | None = None
  for lo in range(0, world.num_users, chunk_users):
    hi = min(lo + chunk_users, world.num_users)
    users, columns = [], {"item": [], "timestamp": [], "engagement": [], "positive": []}
    for block in range(lo // block_users, (hi - 1) // block_users + 1):
      if cached is None or cached[0] != block:
        cached = (block, _simulate_block(world, block))
      log = cached[1]
      block_rows_users, rows = log.rows(max(lo, block * block_users),
                                        min(hi, (block + 1) * block_users))
      users.append(block_rows_users - lo)
      for name, parts in columns.items():
        parts.append(getattr(log, name)[rows])
    yield Interactions(
        user=np.concatenate(users).astype(np.int32),
        **{name: np.concatenate(parts) for name, parts in columns.items()},
        user_ids=world.user_ids[lo:hi], item_ids=world.item_ids)


def concatenate_chunks(chunks: Iterable[Interactions]) -> Interactions:
  """One `Interactions` from consecutive chunks (their users stacked in order)."""
  chunks = list(chunks)
  if not chunks:
    raise ValueError("concatenate_chunks: no chunks given")
  num_items = chunks[0].num_items
  for i, chunk in enumerate(chunks):
    if chunk.num_items != num_items:
      raise ValueError(f"concatenate_chunks: chunk {i} has {chunk.num_items} items, "
                       f"chunk 0 has {num_items}")
  first_user = np.cumsum([0] + [c.num_users for c in chunks[:-1]])
  return Interactions(
      user=np.concatenate([c.user + np.int32(f) for c, f in zip(chunks, first_user)]),
      item=np.concatenate([c.item for c in chunks]),
      timestamp=np.concatenate([c.timestamp for c in chunks]),
      engagement=np.concatenate([c.engagement for c in chunks]),
      positive=np.concatenate([c.positive for c in chunks]),
      user_ids=np.concatenate([c.user_ids for c in chunks]),
      item_ids=chunks[0].item_ids)
