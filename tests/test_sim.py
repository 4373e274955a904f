"""The closed-loop simulator: choice model, discovery, bitmasks, history, common random numbers."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from explore.data import synthetic
from explore.sim import choice as choice_lib
from explore.sim import experiment as experiment_lib
from explore.sim import policies as policies_lib
from explore.sim import population as population_lib
from explore.sim import simulator as sim_lib

ENGAGEMENT = choice_lib.Engagement(base_enjoyment=0.15, concentration=8.0, positive_threshold=0.5)
MODEL = choice_lib.ChoiceModel(click_scale=2.0, curiosity=0.4, no_click_level=0.5,
                               satisfaction_weight=1.0, satisfaction_decay=0.5)

# One user: topic 0 is a known core interest (strength 0.8), topic 1 a hidden one (0.6).
INTEREST_TOPIC = jnp.array([[0, 1, -1]])
INTEREST_STRENGTH = jnp.array([[0.8, 0.6, 0.0]])
KNOWN = jnp.array([[True, False, False]])
SLATE_TOPIC = jnp.array([[0, 1, 2]])  # core, hidden, off-interest
SLATE_QUALITY = jnp.array([[0.0, 0.1, 0.0]])


def _response(satisfaction=0.0):
  return choice_lib.slate_response(MODEL, ENGAGEMENT, INTEREST_TOPIC, INTEREST_STRENGTH, KNOWN,
                                   jnp.array([satisfaction]), SLATE_TOPIC, SLATE_QUALITY)


def _beta_tail(m):
  return 1.0 - special.betainc(m * 8.0, (1.0 - m) * 8.0, 0.5)


def test_choice_probabilities_match_the_hand_computed_logit():
  response = _response()
  # Utilities: skip 2 * 0.5; core 2 * 0.8; hidden (not known: curiosity) 2 * (0.4 + 0.1);
  # off-interest 2 * 0.4.
  weights = [math.exp(1.0), math.exp(1.6), math.exp(1.0), math.exp(0.8)]
  total = sum(weights)
  np.testing.assert_allclose(response.no_click_probability, [weights[0] / total], rtol=1e-5)
  np.testing.assert_allclose(response.click_probability[0], np.array(weights[1:]) / total,
                             rtol=1e-5)
  # Enjoyment follows the truth: the hidden interest's strength, base elsewhere.
  np.testing.assert_allclose(response.expected_watch[0], [0.8, 0.7, 0.15], rtol=1e-6)
  np.testing.assert_allclose(response.positive_probability[0],
                             [_beta_tail(0.8), _beta_tail(0.7), _beta_tail(0.15)], rtol=1e-4)
  assert response.interest_slot[0].tolist() == [0, 1, -1]


def test_satisfaction_lowers_the_chance_of_skipping():
  assert float(_response(0.3).no_click_probability[0]) < float(_response(0.0).no_click_probability[0])
  outcome = choice_lib.Outcome(choice=jnp.array([0]), positive=jnp.array([True]),
                               watch=jnp.array([0.8]))
  # 0.5 * 0.1 + 0.5 * (0.8 - 0.5)
  np.testing.assert_allclose(choice_lib.next_satisfaction(MODEL, ENGAGEMENT, jnp.array([0.1]),
                                                          outcome), [0.2], rtol=1e-6)


def test_realise_picks_by_inverse_cdf_and_positivity_by_threshold():
  response = _response()
  p0 = float(response.no_click_probability[0])
  p = np.asarray(response.click_probability[0])
  cases = [(p0 / 2, -1), (p0 + p[0] / 2, 0), (p0 + p[0] + p[1] / 2, 1), (0.999999, 2)]
  for u, expected in cases:
    outcome = choice_lib.realise(response, jnp.array([u]), jnp.array([0.0]))
    assert int(outcome.choice[0]) == expected
  hidden = p0 + p[0] + p[1] / 2
  q = float(response.positive_probability[0, 1])
  assert bool(choice_lib.realise(response, jnp.array([hidden]), jnp.array([q - 1e-3])).positive[0])
  assert not bool(choice_lib.realise(response, jnp.array([hidden]),
                                     jnp.array([q + 1e-3])).positive[0])


def _tiny_env():
  """Three items (topics 0, 1, 2 = clusters 0, 1, 2), the user above, on one policy row."""
  catalog = population_lib.Catalog(topic=jnp.array([0, 1, 2]), quality=SLATE_QUALITY[0],
                                   cluster=jnp.array([0, 1, 2]), vectors=jnp.eye(3))
  users = population_lib.Users(
      interest_topic=INTEREST_TOPIC, interest_strength=INTEREST_STRENGTH, known=KNOWN,
      engaged=jnp.asarray(population_lib.pack_bits(np.array([[True, False, False]]))),
      history=jnp.array([[-1, 0]]), taste=jnp.zeros((1, 3)))
  return sim_lib.Environment(catalog=catalog, users=users, retriever=None, prior_weight=0.0,
                             taste_scale=1.0, engagement=ENGAGEMENT, num_clusters=3)


def test_positive_engagement_with_a_hidden_interest_discovers_it_and_it_persists():
  env = _tiny_env()
  config = sim_lib.SimConfig(rounds=2, slate_size=3, explore_slots=1, taste_rate=0.5)
  state = sim_lib.initial_state([policies_lib.ExploitOnly()], env.users, config.rounds)
  slate = jnp.array([[[0, 1, 2]]])  # [P, B, S]
  response = choice_lib.slate_response(MODEL, ENGAGEMENT, INTEREST_TOPIC[None],
                                       INTEREST_STRENGTH[None], state.known, state.satisfaction,
                                       SLATE_TOPIC[None], SLATE_QUALITY[None])
  hit = choice_lib.Outcome(choice=jnp.array([[1]]), positive=jnp.array([[True]]),
                           watch=jnp.array([[0.7]]))
  state = sim_lib.apply_outcome(env, state, slate, hit, response, 0, config, MODEL)
  assert state.known[0, 0].tolist() == [True, True, False]
  assert population_lib.unpack_bits(state.engaged[0], 3)[0].tolist() == [True, True, False]
  assert state.history[0, 0].tolist() == [0, 1]
  assert state.consumed[0, 0].tolist() == [1, -1]
  np.testing.assert_allclose(state.taste[0, 0], [0.0, 0.5, 0.0])
  skip = choice_lib.Outcome(choice=jnp.array([[-1]]), positive=jnp.array([[False]]),
                            watch=jnp.array([[0.0]]))
  state = sim_lib.apply_outcome(env, state, slate, skip, response, 1, config, MODEL)
  assert state.known[0, 0].tolist() == [True, True, False]  # discovery persists
  assert state.consumed[0, 0].tolist() == [1, -1]
  # A negative engagement with an off-interest topic discovers nothing and engages no cluster.
  miss = choice_lib.Outcome(choice=jnp.array([[2]]), positive=jnp.array([[False]]),
                            watch=jnp.array([[0.15]]))
  after = sim_lib.apply_outcome(env, state, slate, miss, response, 1, config, MODEL)
  assert after.known[0, 0].tolist() == [True, True, False]
  assert population_lib.unpack_bits(after.engaged[0], 3)[0].tolist() == [True, True, False]


def test_round_metrics_are_the_exact_expectations():
  response = _response()
  engaged = jnp.array([[True, False, False]])
  metrics = sim_lib.round_metrics(response, jnp.array([[0, 1, 2]]), engaged, KNOWN, 1,
                                  jnp.array([0.0]))
  p = np.asarray(response.click_probability[0])
  q = np.asarray(response.positive_probability[0])
  np.testing.assert_allclose(metrics.clicks, [p.sum()], rtol=1e-6)
  np.testing.assert_allclose(metrics.positives, [(p * q).sum()], rtol=1e-6)
  np.testing.assert_allclose(metrics.new_clusters, [p[1] * q[1] + p[2] * q[2]], rtol=1e-6)
  np.testing.assert_allclose(metrics.discoveries, [p[1] * q[1]], rtol=1e-6)
  np.testing.assert_allclose(metrics.explore_clicks, [p[2]], rtol=1e-6)


def test_bitmask_round_trip_and_set():
  rng = np.random.default_rng(0)
  mask = rng.random((5, 70)) < 0.3
  words = jnp.asarray(population_lib.pack_bits(mask))
  assert words.shape == (5, 3) and words.dtype == jnp.uint32
  np.testing.assert_array_equal(population_lib.unpack_bits(words, 70), mask)
  cluster = jnp.array([0, 31, 32, 69, -1])
  enable = jnp.array([True, True, False, True, True])
  expected = mask.copy()
  expected[0, 0] = expected[1, 31] = expected[3, 69] = True
  np.testing.assert_array_equal(
      population_lib.unpack_bits(population_lib.set_bits(words, cluster, enable), 70), expected)


def test_history_update_keeps_the_last_k_unique_clusters():
  rng = np.random.default_rng(1)
  for _ in range(50):
    sequence = rng.integers(0, 5, size=8)
    history = jnp.array([[-1, -1, -1]])
    for c in sequence.tolist():
      history = sim_lib.update_history(history, jnp.array([c]), jnp.array([True]))
    assert history[0].tolist() == population_lib.last_unique(sequence, 3).tolist()
  unchanged = sim_lib.update_history(jnp.array([[1, 2]]), jnp.array([3]), jnp.array([False]))
  assert unchanged.tolist() == [[1, 2]]


@pytest.fixture(scope="module")
def small_world():
  config = synthetic.SyntheticConfig(num_users=120, num_items=600, branching=(2, 4, 2),
                                     events_per_user=(20, 40))
  world, interactions, _ = synthetic.generate(config)
  rng = np.random.default_rng(0)
  item_vectors = rng.normal(size=(world.num_items, 8)).astype(np.float32)
  user_vectors = rng.normal(size=(world.num_users, 8)).astype(np.float32)
  return world, interactions, item_vectors, user_vectors


def _environment(small_world, users=np.arange(40), replicas=2):
  world, interactions, item_vectors, user_vectors = small_world
  m = world.num_topics
  catalog, population = population_lib.build_population(
      world, interactions, world.item_topic, m, item_vectors, user_vectors, users, 2)
  c = world.config
  engagement = choice_lib.Engagement(c.base_enjoyment, c.engagement_concentration,
                                     c.positive_threshold)
  return experiment_lib.make_environment(catalog, experiment_lib.replicate(population, replicas),
                                         user_vectors, None, 0.0, engagement, m)


CONFIG = sim_lib.SimConfig(rounds=4, slate_size=4, explore_slots=1)


def test_policies_share_random_numbers(small_world):
  env = _environment(small_world)
  model = choice_lib.ChoiceModel()
  alone = experiment_lib.run_experiment(env, [policies_lib.ExploitOnly()], CONFIG, model, 3)
  together = experiment_lib.run_experiment(
      env, [policies_lib.RandomExploration(), policies_lib.ExploitOnly(),
            policies_lib.ExploitOnly()], CONFIG, model, 3)
  for name in sim_lib.RoundMetrics._fields:
    a, t = getattr(alone, name), getattr(together, name)  # [rounds, P, B]
    np.testing.assert_array_equal(t[:, 1], t[:, 2])  # same policy, same draws: identical
    np.testing.assert_allclose(t[:, 1], a[:, 0], rtol=1e-5, atol=1e-6)  # no cross-talk
  assert not np.allclose(together.explore_clicks[:, 0], together.explore_clicks[:, 1])
  other_seed = experiment_lib.run_experiment(env, [policies_lib.ExploitOnly()], CONFIG, model, 4)
  assert not np.allclose(other_seed.satisfaction, alone.satisfaction)


def test_oracle_explores_hidden_interests_and_discovers_more(small_world):
  world = small_world[0]
  env = _environment(small_world, users=np.arange(120), replicas=1)
  m = world.num_topics
  oracle = policies_lib.Oracle(population_lib.topic_clusters(world.item_topic, world.item_topic,
                                                             m, m), m)
  config = sim_lib.SimConfig(rounds=6, slate_size=4, explore_slots=2)
  metrics = experiment_lib.run_experiment(env, [policies_lib.ExploitOnly(), oracle], config,
                                          choice_lib.ChoiceModel(), 0)
  totals = experiment_lib.per_user(metrics, 1)
  assert totals["discoveries"][1].mean() > totals["discoveries"][0].mean() + 0.1


def test_table_policy_ranks_the_planner_table_first():
  # Planner: after tuple (0, 1) plan cluster 3 then 2; popularity favours cluster 4.
  class Fixed:
    def scores(self, history):
      out = np.zeros((len(history), 5))
      first = (history[:, 0] == 0) & (history[:, 1] == 1)
      out[first, 3], out[first, 2] = 2.0, 1.0
      return out

  table = policies_lib.plan_table(Fixed(), 5, 2, top_n=2)
  assert table.shape == (25, 2) and table[0 * 5 + 1].tolist() == [3, 2]
  assert table[0].tolist() == [-1, -1]  # (0, 0) repeats a cluster: never a history
  policy = policies_lib.TablePolicy("planner", table, np.array([0, 0, 0, 0, 9.0]))
  view = policies_lib.View(history=jnp.array([[0, 1], [-1, 1]]), engaged=jnp.zeros((2, 5), bool),
                           interest_topic=None, interest_strength=None, known=None,
                           round=jnp.int32(0))
  scores = np.asarray(policy.cluster_scores((), view, None))
  assert np.argsort(-scores[0])[:3].tolist() == [3, 2, 4]
  assert int(np.argmax(scores[1])) == 4  # a short history falls back to popularity


def test_llm_policy_explores_the_precompute_tables_clusters_for_the_tuple():
  from types import SimpleNamespace  # pylint: disable=g-import-not-at-top
  from explore.eval import planners as planners_lib  # pylint: disable=g-import-not-at-top
  from explore.precompute import table as table_lib  # pylint: disable=g-import-not-at-top
  from explore.sim import stage as sim_stage  # pylint: disable=g-import-not-at-top
  from explore.transitions.examples import NovelTransitions  # pylint: disable=g-import-not-at-top
  m, k = 6, 2
  table = table_lib.TupleTable.empty(m, k, 3)
  table.set_rows(np.array([[0, 1], [2, 3]]), np.array([[4, 2, 5], [1, 0, -1]]),
                 np.array([[-0.1, -0.2, -0.3], [-0.5, -0.6, 0.0]]))
  # Training transitions make cluster 3 the most popular novel cluster (the fallback).
  transitions = NovelTransitions(
      user=np.array([0, 1, 2], np.int32), history=np.array([[0, 1], [1, 2], [2, 0]], np.int32),
      next_cluster=np.array([3, 3, 5], np.int32), timestamp=np.arange(3, dtype=np.int64),
      split=np.zeros(3, np.int8), num_engaged_before=np.full(3, 2, np.int32),
      engaged_clusters=np.zeros(0, np.int32), engaged_offsets=np.zeros(4, np.int64),
      num_clusters=m, cut_timestamp=10)
  options = sim_stage.SimOptions(policies=("exploit_only", "llm"))
  exploit, llm = sim_stage.build_policies(options, transitions, m, np.arange(m), table)
  assert llm.name == "llm" and exploit.name == "exploit_only"
  np.testing.assert_array_equal(llm.table, table.clusters)
  # Users: tuple (0, 1); tuple (0, 1) having engaged with 4; tuple (2, 3); history shorter than K.
  history = np.array([[0, 1], [0, 1], [2, 3], [-1, 2]], np.int32)
  engaged = np.zeros((4, m), bool)
  engaged[1, 4] = True
  state = SimpleNamespace(engaged=[population_lib.pack_bits(engaged)] * 2,
                          history=[jnp.asarray(history)] * 2, known=[None] * 2, policy=[(), ()])
  users = SimpleNamespace(interest_topic=None, interest_strength=None)
  clusters = np.asarray(sim_lib.explore_clusters([exploit, llm], state, users, m, 2,
                                                 jnp.int32(0), None))  # [P, B, E]
  assert clusters[0].tolist() == [[-1, -1]] * 4  # exploit-only explores nothing
  assert clusters[1, 0].tolist() == [4, 2]  # the table's first two entries for (0, 1)
  assert clusters[1, 1].tolist() == [2, 5]  # an engaged cluster is skipped
  assert clusters[1, 2].tolist() == [1, 0]
  popular = planners_lib.PopularNovel(transitions.history, transitions.next_cluster, m)
  assert int(np.argmax(popular.popularity)) == 3
  assert clusters[1, 3, 0] == 3  # short history: popular-novel
  with pytest.raises(sim_stage.SimStageError, match="no LLM table"):
    sim_stage.build_policies(options, transitions, m, np.arange(m), None)


def test_world_that_did_not_make_the_logs_is_refused(small_world):
  world, interactions = small_world[0], small_world[1]
  population_lib.check_world_matches(world, interactions)
  other = synthetic.build_world(synthetic.SyntheticConfig(
      seed=1, num_users=120, num_items=600, branching=(2, 4, 2), events_per_user=(20, 40)))
  with pytest.raises(population_lib.PopulationError, match="does not match the run's data"):
    population_lib.check_world_matches(other, interactions)
  bigger = synthetic.build_world(synthetic.SyntheticConfig(
      num_users=121, num_items=600, branching=(2, 4, 2), events_per_user=(20, 40)))
  with pytest.raises(population_lib.PopulationError, match="121 users"):
    population_lib.check_world_matches(bigger, interactions)


def test_bad_settings_are_named():
  with pytest.raises(sim_lib.SimConfigError, match="explore_slots"):
    sim_lib.SimConfig(slate_size=2, explore_slots=2)
  with pytest.raises(choice_lib.ChoiceModelError, match="click_scale"):
    choice_lib.ChoiceModel(click_scale=0.0)



def test_exploitation_ranks_by_the_stored_vector_mixed_with_the_recent_average(small_world):
  env = _environment(small_world, replicas=1)
  policies = [policies_lib.ExploitOnly()]
  state = sim_lib.initial_state(policies, env.users, 2)
  drifted = state._replace(taste=state.taste[:, ::-1] * 3.0)  # another user's direction
  none = jnp.full((1, env.users.taste.shape[0], 0), -1, jnp.int32)
  stored = sim_lib.exploit_top_k(env.users.taste, state.consumed[0], env.catalog.vectors, 4, 16)
  anchored = sim_lib.SimConfig(slate_size=4, explore_slots=0, taste_mix=0.0)
  np.testing.assert_array_equal(sim_lib.build_slates(env, drifted, none, anchored)[0], stored)
  half = sim_lib.SimConfig(slate_size=4, explore_slots=0, taste_mix=0.5)
  mixed = 0.5 * env.users.taste + 0.5 * drifted.taste[0]
  np.testing.assert_array_equal(
      sim_lib.build_slates(env, drifted, none, half)[0],
      sim_lib.exploit_top_k(mixed, state.consumed[0], env.catalog.vectors, 4, 16))
