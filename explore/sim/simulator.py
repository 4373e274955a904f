"""The closed-loop simulator: every policy plays the same users with the same draws.

One round, for P policies x B users at once (users on a batch axis, policies stacked
in front of it, rounds under `lax.scan`, explicit PRNG keys):
  1. exploitation: each user's recommender state ("taste") ranks the whole catalog
     (dot products with the item vectors, items consumed in the simulation removed);
     the best `slate_size` items are the exploitation candidates;
  2. exploration: each policy picks `explore_slots` clusters per user and restricted
     retrieval (`RestrictedRetriever`, with the recommender's popularity prior) grounds
     each in the user's best item of that cluster not yet consumed or on the slate;
     a slot with no cluster (exploit-only, nothing novel left) takes the next
     exploitation candidate;
  3. the user responds (`choice`): exact click probabilities give the round's expected
     metrics; shared uniforms realise one choice, which updates the state.

The taste is not recomputed by the transformer. A moving average starts at the stored
user vector u and moves toward each consumed item's vector, recent <- (1 - a) recent +
a * s * v_item, with s = mean |user vector| / mean |item vector| so the two live on one
scale; the query is the mix taste = (1 - w) u + w recent, so the stored vector keeps
weight 1 - w however long the simulation runs (see docs/sim.md for why this stands in
for re-encoding the history, and what an unanchored average did).

Common random numbers: the round's uniforms (choice, positivity) and the policies'
own randomness come from `fold_in(key, round)` and are the same for every policy, so
differences between policies are paired per user and round.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import gin
import jax
import jax.numpy as jnp

from explore.sim import choice as choice_lib
from explore.sim import population as population_lib
from explore.sim.policies import NEVER, Policy, View

METRICS = ("clicks", "watch", "positives", "new_clusters", "discoveries", "explore_clicks",
           "satisfaction")


class SimConfigError(ValueError):
  """Simulator settings that do not fit together."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SimConfig:
  """Shape of the simulated experiment (gin: `SimConfig.x`).

  rounds: slates shown to each user.
  slate_size: items per slate, `explore_slots` of them chosen by the policy.
  taste_rate: a in the moving average of consumed item vectors.
  taste_mix: w, the average's weight in the query (0 keeps the stored user vector).
  exploit_chunk: users per block of the full-catalog exploitation ranking (memory).
  """

  rounds: int = 20
  slate_size: int = 6
  explore_slots: int = 2
  taste_rate: float = 0.3
  taste_mix: float = 0.5
  exploit_chunk: int = 1024

  def __post_init__(self):
    for name in ("rounds", "slate_size", "exploit_chunk"):
      if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
        raise SimConfigError(f"SimConfig.{name}={getattr(self, name)!r} must be an integer >= 1")
    if not isinstance(self.explore_slots, int) or not 0 <= self.explore_slots < self.slate_size:
      raise SimConfigError(f"SimConfig.explore_slots={self.explore_slots!r} must be in "
                           f"[0, slate_size={self.slate_size})")
    for name in ("taste_rate", "taste_mix"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise SimConfigError(f"SimConfig.{name}={getattr(self, name)!r} must be in [0, 1]")


class State(NamedTuple):
  """Per policy and user ([P, B, ...]); `policy` holds each policy's own state."""

  known: jax.Array  # [P, B, I] bool
  engaged: jax.Array  # [P, B, W] uint32 bitmask of clusters
  history: jax.Array  # [P, B, K] int32
  taste: jax.Array  # [P, B, D] float32 moving average of consumed item vectors
  satisfaction: jax.Array  # [P, B] float32
  consumed: jax.Array  # [P, B, R] int32 item per round, -1 without a click
  policy: tuple


class Environment(NamedTuple):
  """What stays fixed during a simulation."""

  catalog: population_lib.Catalog
  users: population_lib.Users
  retriever: Any  # RestrictedRetriever over [N, D + 1] item vectors + popularity prior
  prior_weight: float  # the retrieval query's last coordinate (0 without a prior)
  taste_scale: float
  engagement: choice_lib.Engagement
  num_clusters: int


def initial_state(policies: Sequence[Policy], users: population_lib.Users,
                  rounds: int) -> State:
  p, b = len(policies), users.taste.shape[0]

  def stack(x):
    return jnp.broadcast_to(x, (p, *x.shape))

  return State(known=stack(users.known), engaged=stack(users.engaged),
               history=stack(users.history), taste=stack(users.taste),
               satisfaction=jnp.zeros((p, b), jnp.float32),
               consumed=jnp.full((p, b, rounds), -1, jnp.int32),
               policy=tuple(policy.init(b) for policy in policies))


def exploit_top_k(taste: jax.Array, consumed: jax.Array, vectors: jax.Array, k: int,
                  chunk: int) -> jax.Array:
  """[R, k] int32 best items by taste . vector, consumed items excluded, `chunk` rows at a time."""
  rows = taste.shape[0]
  pad = -rows % chunk
  taste = jnp.pad(taste, ((0, pad), (0, 0)))  # [R', D]
  consumed = jnp.pad(consumed, ((0, pad), (0, 0)), constant_values=-1)  # [R', C]
  num_items = vectors.shape[0]

  def block(args):
    t, c = args  # [chunk, D], [chunk, C]
    scores = jnp.einsum("bd,nd->bn", t, vectors)  # [chunk, N]
    index = jnp.where(c >= 0, c, num_items)  # -1 -> dropped
    scores = scores.at[jnp.arange(chunk)[:, None], index].set(NEVER, mode="drop")
    return jax.lax.top_k(scores, k)[1]  # [chunk, k]

  blocks = jax.lax.map(block, (taste.reshape(-1, chunk, taste.shape[1]),
                               consumed.reshape(-1, chunk, consumed.shape[1])))
  return blocks.reshape(-1, k)[:rows].astype(jnp.int32)


def explore_clusters(policies: Sequence[Policy], state: State, users: population_lib.Users,
                     num_clusters: int, slots: int, round_index, key) -> jax.Array:
  """[P, B, E] int32 each policy's exploration clusters (-1 where it explores nothing)."""
  out = []
  for p, policy in enumerate(policies):
    engaged = population_lib.unpack_bits(state.engaged[p], num_clusters)  # [B, M]
    view = View(history=state.history[p], engaged=engaged, interest_topic=users.interest_topic,
                interest_strength=users.interest_strength, known=state.known[p],
                round=round_index)
    scores = policy.cluster_scores(state.policy[p], view, key)
    if scores is None or slots == 0:
      out.append(jnp.full((engaged.shape[0], slots), -1, jnp.int32))
      continue
    if policy.novel_only:
      scores = jnp.where(engaged, NEVER, scores)
    value, cluster = jax.lax.top_k(scores, slots)  # [B, E]
    out.append(jnp.where(value > NEVER, cluster, -1).astype(jnp.int32))
  return jnp.stack(out)


def build_slates(env: Environment, state: State, clusters: jax.Array, config: SimConfig
                 ) -> jax.Array:
  """[P, B, S] item slates: exploitation slots, then the exploration slots' items."""
  p, b, e = clusters.shape
  s, exploit_slots = config.slate_size, config.slate_size - config.explore_slots
  taste = (1.0 - config.taste_mix) * env.users.taste + config.taste_mix * state.taste  # [P, B, D]
  candidates = exploit_top_k(taste.reshape(p * b, -1), state.consumed.reshape(p * b, -1),
                             env.catalog.vectors, s, config.exploit_chunk).reshape(p, b, s)
  if e == 0:
    return candidates
  query = jnp.concatenate(
      [taste, jnp.full((p, b, 1), env.prior_weight, jnp.float32)], -1)  # [P, B, D + 1]
  query = jnp.broadcast_to(query[:, :, None], (p, b, e, query.shape[-1]))  # [P, B, E, D']
  seen = jnp.concatenate([state.consumed, candidates], -1)  # [P, B, R + S]
  seen = jnp.broadcast_to(seen[:, :, None], (p, b, e, seen.shape[-1]))
  _, found = env.retriever.top_k(query.reshape(p * b * e, -1), clusters.reshape(-1, 1), 1,
                                 seen.reshape(p * b * e, -1), validate=False)
  found = found.reshape(p, b, e)
  explore = jnp.where((clusters >= 0) & (found >= 0), found, candidates[:, :, exploit_slots:])
  return jnp.concatenate([candidates[:, :, :exploit_slots], explore], -1).astype(jnp.int32)


def update_history(history: jax.Array, cluster: jax.Array, enable: jax.Array) -> jax.Array:
  """[..., K] the last K unique clusters after engaging with `cluster` where `enable`."""
  k = history.shape[-1]
  extended = jnp.concatenate([history, cluster[..., None]], -1)  # [..., K + 1]
  drop = jnp.concatenate([history == cluster[..., None], jnp.zeros_like(cluster[..., None], bool)],
                         -1)
  drop = drop.at[..., 0].set(drop[..., 0] | ~drop[..., :k].any(-1))  # no repeat: oldest leaves
  keep_order = jnp.argsort(drop, axis=-1, stable=True)[..., :k]  # kept entries, in order
  new = jnp.take_along_axis(extended, keep_order, -1)
  return jnp.where(enable[..., None], new, history)


class RoundMetrics(NamedTuple):
  """Expected (exact, from the click probabilities) outcomes of one round, [P, B] each."""

  clicks: jax.Array  # P(click)
  watch: jax.Array  # expected watch fraction consumed (0 without a click)
  positives: jax.Array  # P(positive engagement)
  new_clusters: jax.Array  # P(positive engagement with a cluster new to the user): UEUC
  discoveries: jax.Array  # P(discovering a hidden interest)
  explore_clicks: jax.Array  # P(clicking an exploration slot)
  satisfaction: jax.Array  # satisfaction after the round (realised)


def round_metrics(response: choice_lib.SlateResponse, slate_clusters: jax.Array,
                  engaged: jax.Array, known: jax.Array, explore_slots: int,
                  satisfaction: jax.Array) -> RoundMetrics:
  """The round's expected metrics from the exact choice probabilities ([P, B, S] inputs)."""
  click = response.click_probability  # [P, B, S]
  positive = click * response.positive_probability  # [P, B, S]
  new_cluster = ~jnp.take_along_axis(engaged, jnp.maximum(slate_clusters, 0), -1)  # [P, B, S]
  slot = response.interest_slot  # [P, B, S]
  hidden = (slot >= 0) & ~jnp.take_along_axis(known, jnp.maximum(slot, 0), -1)
  explore = jnp.arange(click.shape[-1]) >= click.shape[-1] - explore_slots  # [S]
  return RoundMetrics(
      clicks=click.sum(-1), watch=(click * response.expected_watch).sum(-1),
      positives=positive.sum(-1), new_clusters=(positive * new_cluster).sum(-1),
      discoveries=(positive * hidden).sum(-1), explore_clicks=(click * explore).sum(-1),
      satisfaction=satisfaction)


def apply_outcome(env: Environment, state: State, slate: jax.Array, outcome: choice_lib.Outcome,
                  response: choice_lib.SlateResponse, round_index, config: SimConfig,
                  model: choice_lib.ChoiceModel) -> State:
  """The state after each user's realised choice ([P, B] outcome over [P, B, S] slates)."""
  clicked = outcome.choice >= 0  # [P, B]
  index = jnp.maximum(outcome.choice, 0)[..., None]
  item = jnp.where(clicked, jnp.take_along_axis(slate, index, -1)[..., 0], -1)  # [P, B]
  cluster = jnp.where(clicked, env.catalog.cluster[jnp.maximum(item, 0)], -1)
  slot = jnp.take_along_axis(response.interest_slot, index, -1)[..., 0]  # [P, B]
  num_slots = state.known.shape[-1]
  discovered = (jnp.arange(num_slots) == slot[..., None]) & outcome.positive[..., None]
  moved = ((1.0 - config.taste_rate) * state.taste
           + config.taste_rate * env.taste_scale * env.catalog.vectors[jnp.maximum(item, 0)])
  return state._replace(
      known=state.known | discovered,
      engaged=population_lib.set_bits(state.engaged, cluster, outcome.positive),
      history=update_history(state.history, cluster, outcome.positive),
      taste=jnp.where(clicked[..., None], moved, state.taste),
      satisfaction=choice_lib.next_satisfaction(model, env.engagement, state.satisfaction,
                                                outcome),
      consumed=state.consumed.at[:, :, round_index].set(item))


def simulate(env: Environment, policies: Sequence[Policy], config: SimConfig,
             model: choice_lib.ChoiceModel, key: jax.Array) -> tuple[State, RoundMetrics]:
  """Runs every policy for `config.rounds` rounds; metrics are [rounds, P, B] arrays."""
  users, catalog, num_clusters = env.users, env.catalog, env.num_clusters

  def step(state: State, round_index):
    round_key = jax.random.fold_in(key, round_index)
    u_choice, u_positive, policy_key = jax.random.split(round_key, 3)
    batch = users.taste.shape[0]
    u_choice = jax.random.uniform(u_choice, (batch,))  # [B] shared by every policy
    u_positive = jax.random.uniform(u_positive, (batch,))
    clusters = explore_clusters(policies, state, users, num_clusters, config.explore_slots,
                                round_index, policy_key)  # [P, B, E]
    slate = build_slates(env, state, clusters, config)  # [P, B, S]
    p = len(policies)
    response = choice_lib.slate_response(
        model, env.engagement, jnp.broadcast_to(users.interest_topic, state.known.shape),
        jnp.broadcast_to(users.interest_strength, state.known.shape), state.known,
        state.satisfaction, catalog.topic[slate], catalog.quality[slate])
    outcome = choice_lib.realise(response, jnp.broadcast_to(u_choice, (p, batch)),
                                 jnp.broadcast_to(u_positive, (p, batch)))
    engaged = population_lib.unpack_bits(state.engaged, num_clusters)  # [P, B, M]
    slate_clusters = catalog.cluster[slate]
    new = apply_outcome(env, state, slate, outcome, response, round_index, config, model)
    explored = config.slate_size - config.explore_slots + jnp.arange(config.explore_slots)
    reward = (outcome.choice[..., None] == explored) & outcome.positive[..., None]  # [P, B, E]
    new = new._replace(policy=tuple(
        policy.update(s, clusters[i], reward[i])
        for i, (policy, s) in enumerate(zip(policies, state.policy))))
    metrics = round_metrics(response, slate_clusters, engaged, state.known,
                            config.explore_slots, new.satisfaction)
    return new, metrics

  state = initial_state(policies, users, config.rounds)
  return jax.lax.scan(step, state, jnp.arange(config.rounds))
