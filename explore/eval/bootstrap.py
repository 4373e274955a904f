"""Paired bootstrap confidence intervals for the difference of two planners' hit@k.

Two planners evaluated on the same test examples give paired hits; the
difference of their hit rates is resampled over examples (with replacement,
the same resample for both), and the percentile interval of the resampled
differences is the confidence interval. Pairing removes the variance the
planners share (easy and hard examples), so the interval is much narrower
than one from two independent intervals.

`paired_buckets` compares any two planners (e.g. the LLMs of two runs on the
same test examples) overall and in each tuple bucket, `pooled_buckets` two
groups of runs (e.g. three seeds of each setting), `across_worlds` pairs of
planners on several worlds (each world its own test examples, resampled
within the world: a stratified bootstrap); `llm_minus_best_count`
is the comparison the planner's case rests on: the
LLM's hit@k minus the better count planner's (last-cluster or transition
counts, whichever has the higher overall hit@k on these examples), overall
and on the test tuples never seen in training.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from explore.eval import hit_rate
from explore.transitions.examples import NovelTransitions

COUNT_PLANNERS = ("last_cluster", "transition")


class BootstrapError(ValueError):
  """Hits of different lengths, or settings out of range."""


def paired_difference_ci(hits_a: np.ndarray, hits_b: np.ndarray, samples: int = 2000,
                         level: float = 0.95, seed: int = 0,
                         strata: np.ndarray | None = None) -> dict[str, float | int | None]:
  """{"difference", "low", "high", "examples"}: mean(a) - mean(b) and its percentile interval.

  Args:
    hits_a, hits_b: [n] per-example hits (bool, 0/1, or a fraction of runs that hit) of two
      planners on the same examples.
    samples: bootstrap resamples.
    level: the interval's coverage, in (0, 1).
    seed: the resampling seed.
    strata: optional [n] integer group of each example (e.g. its world): each resample then
      draws every group's examples from that group only, keeping the group sizes, so the
      interval is that of the pooled mean over fixed groups.
  """
  a = np.asarray(hits_a, np.float64)
  b = np.asarray(hits_b, np.float64)
  if a.ndim != 1 or a.shape != b.shape:
    raise BootstrapError(f"hits must be two [n] arrays of one length, got {a.shape} and {b.shape}")
  if not 0.0 < level < 1.0 or samples < 1:
    raise BootstrapError(f"level={level} must be in (0, 1) and samples={samples} >= 1")
  n = len(a)
  if n == 0:
    return {"difference": None, "low": None, "high": None, "examples": 0}
  if strata is None:
    strata = np.zeros(n, np.int64)
  strata = np.asarray(strata)
  if strata.shape != a.shape:
    raise BootstrapError(f"strata has shape {strata.shape}, expected [{n}]: one group per hit")
  diff = a - b  # [n]
  rng = np.random.default_rng(seed)
  means = np.zeros(samples)
  for group in np.unique(strata):
    members = diff[strata == group]  # [n_g]
    size = len(members)
    for start in range(0, samples, 256):  # [chunk, n_g] index blocks bound the memory
      stop = min(samples, start + 256)
      means[start:stop] += members[rng.integers(0, size, size=(stop - start, size))].sum(axis=1)
  means /= n
  tail = (1.0 - level) / 2.0
  low, high = np.quantile(means, [tail, 1.0 - tail])
  return {"difference": float(diff.mean()), "low": float(low), "high": float(high),
          "examples": int(n)}


def llm_minus_best_count(transitions: NovelTransitions, scores: Mapping[str, np.ndarray],
                         examples: np.ndarray, llm: str = "llm", k: int = 5,
                         rare_max: int = 4, samples: int = 2000, seed: int = 0,
                         count_planners: Sequence[str] = COUNT_PLANNERS) -> dict:
  """Paired bootstrap CIs of hit@k of `llm` minus the best count planner, overall and unseen.

  `scores` maps planner names to [n, M] scores of `examples` (as given to
  `hit_rate.evaluate_planners`).
  """
  missing = [name for name in (llm, *count_planners) if name not in scores]
  if missing:
    raise BootstrapError(f"llm_minus_best_count: no scores for planners {missing}")
  hits, buckets = _hits_and_buckets(
      transitions, {name: scores[name] for name in (llm, *count_planners)}, examples, k, rare_max)
  best = _best(hits, count_planners)
  out = {"k": k, "llm": llm, "best_count_planner": best, "level": 0.95}
  for bucket in ("all", "unseen"):
    keep = _in_bucket(buckets, bucket)
    out[bucket] = paired_difference_ci(hits[llm][keep], hits[best][keep], samples, 0.95, seed)
  return out


def best_count_planner(transitions: NovelTransitions, scores: Mapping[str, np.ndarray],
                       examples: np.ndarray, k: int = 5,
                       count_planners: Sequence[str] = COUNT_PLANNERS) -> str:
  """The name of the count planner with the highest hit@k on `examples` (as above)."""
  hits, _ = _hits_and_buckets(transitions, {name: scores[name] for name in count_planners},
                              examples, k, rare_max=1)  # buckets unused
  return _best(hits, count_planners)


def _best(hits: Mapping[str, np.ndarray], names: Sequence[str]) -> str:
  """The name with the highest mean hit (ties: the later name)."""
  return max(names, key=lambda name: (hits[name].mean(), name))


def paired_buckets(transitions: NovelTransitions, scores_a: np.ndarray, scores_b: np.ndarray,
                   examples: np.ndarray, k: int = 5, rare_max: int = 4, samples: int = 2000,
                   seed: int = 0) -> dict:
  """Paired bootstrap CIs of hit@k of planner a minus planner b, overall and per tuple bucket.

  `scores_a` and `scores_b` are [n, M] scores of the same `examples`; buckets
  (unseen / rare / frequent) by how often each example's history tuple occurs
  in training, as `hit_rate.evaluate_planners` counts them.
  """
  return pooled_buckets(transitions, [scores_a], [scores_b], examples, k, rare_max, samples,
                        seed)


def pooled_buckets(transitions: NovelTransitions, runs_a: Sequence[np.ndarray],
                   runs_b: Sequence[np.ndarray], examples: np.ndarray, k: int = 5,
                   rare_max: int = 4, samples: int = 2000, seed: int = 0) -> dict:
  """`paired_buckets` with several runs per side (e.g. seeds of one setting).

  Each side's hit of an example is the fraction of its runs that hit it, so
  `a` and `b` are the hit@k averaged over a side's runs and the interval
  resamples examples, the same resample for every run: it is the interval of
  the difference of the two sides' run-averaged hit@k on this population of
  examples, given these runs (the spread between runs is reported beside it
  as each run's own hit@k, `runs_a` / `runs_b`, not folded into the interval).
  Every entry of `runs_a` and `runs_b` is [n, M] scores of the same `examples`.
  """
  runs_a, runs_b = list(runs_a), list(runs_b)
  if not runs_a or not runs_b:
    raise BootstrapError(f"pooled_buckets: each side needs at least one run, got "
                         f"{len(runs_a)} and {len(runs_b)}")
  shapes = {np.shape(s) for s in runs_a + runs_b}
  if len(shapes) != 1 or len(next(iter(shapes))) != 2 or len(runs_a[0]) != len(examples):
    raise BootstrapError(f"pooled_buckets: every run's scores must be [n={len(examples)}, M] of "
                         f"the same shape, got {sorted(shapes)}")
  named = {f"a{i}": s for i, s in enumerate(runs_a)}
  named.update({f"b{i}": s for i, s in enumerate(runs_b)})
  hits, buckets = _hits_and_buckets(transitions, named, examples, k, rare_max)
  side_a = np.mean([hits[f"a{i}"] for i in range(len(runs_a))], axis=0)  # [n] in [0, 1]
  side_b = np.mean([hits[f"b{i}"] for i in range(len(runs_b))], axis=0)
  out = {"k": k, "level": 0.95, "runs_a": len(runs_a), "runs_b": len(runs_b)}
  for bucket in hit_rate.BUCKETS:
    keep = _in_bucket(buckets, bucket)
    out[bucket] = _bucket_row(
        side_a, side_b, keep, [(hits[f"a{i}"], keep) for i in range(len(runs_a))],
        [(hits[f"b{i}"], keep) for i in range(len(runs_b))], samples, seed)
  return out


def across_worlds(worlds: Sequence[tuple[NovelTransitions, np.ndarray, np.ndarray, np.ndarray,
                                         int]],
                  k: int = 5, samples: int = 2000, seed: int = 0) -> dict:
  """`paired_buckets` pooled over worlds that each have their own test examples.

  `worlds` holds one (transitions, scores_a, scores_b, examples, rare_max) per
  world: planner a's and planner b's [n_w, M] scores of that world's
  `examples`. The hit@k of a side is the mean over every world's examples
  (each world weighted by its examples), buckets are each world's own (by its
  training counts), and the interval resamples the examples of each world
  within that world (`paired_difference_ci(strata=...)`), so it is the
  interval of the pooled difference given these worlds. Each world's own
  hit@k is reported as `runs_a` / `runs_b`, in the order given.
  """
  if not worlds:
    raise BootstrapError("across_worlds: no worlds given")
  hits_a, hits_b, buckets, strata = [], [], [], []
  for index, (transitions, scores_a, scores_b, examples, rare_max) in enumerate(worlds):
    if np.shape(scores_a) != np.shape(scores_b) or len(scores_a) != len(examples):
      raise BootstrapError(f"across_worlds: world {index} has scores of shapes "
                           f"{np.shape(scores_a)} and {np.shape(scores_b)} for "
                           f"{len(examples)} examples; both must be [n, M]")
    hits, world_buckets = _hits_and_buckets(transitions, {"a": scores_a, "b": scores_b},
                                            examples, k, rare_max)
    hits_a.append(hits["a"])
    hits_b.append(hits["b"])
    buckets.append(world_buckets)
    strata.append(np.full(len(examples), index))
  side_a, side_b = np.concatenate(hits_a), np.concatenate(hits_b)
  all_buckets, all_strata = np.concatenate(buckets), np.concatenate(strata)
  out = {"k": k, "level": 0.95, "worlds": len(worlds)}
  for bucket in hit_rate.BUCKETS:
    in_world = [_in_bucket(b, bucket) for b in buckets]  # each world's [n_w] mask
    out[bucket] = _bucket_row(side_a, side_b, _in_bucket(all_buckets, bucket),
                              list(zip(hits_a, in_world)), list(zip(hits_b, in_world)),
                              samples, seed, all_strata)
  return out


def _mean(hits: np.ndarray, keep: np.ndarray) -> float | None:
  """The mean of `hits[keep]`, or None when `keep` selects nothing."""
  return float(hits[keep].mean()) if keep.any() else None


def _bucket_row(side_a: np.ndarray, side_b: np.ndarray, keep: np.ndarray,
                runs_a: Sequence[tuple[np.ndarray, np.ndarray]],
                runs_b: Sequence[tuple[np.ndarray, np.ndarray]], samples: int, seed: int,
                strata: np.ndarray | None = None) -> dict:
  """One bucket: each side's mean hit over `keep`, each run's own (its (hits, mask) pairs) and
  the paired interval of the difference (resampled within `strata` when given)."""
  return {"a": _mean(side_a, keep), "b": _mean(side_b, keep),
          "runs_a": [_mean(h, m) for h, m in runs_a],
          "runs_b": [_mean(h, m) for h, m in runs_b],
          **paired_difference_ci(side_a[keep], side_b[keep], samples, 0.95, seed,
                                 strata=None if strata is None else strata[keep])}


def _hits_and_buckets(transitions: NovelTransitions, scores: Mapping[str, np.ndarray],
                      examples: np.ndarray, k: int, rare_max: int
                      ) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """({name: [n] bool novel-cluster hit@k}, [n] tuple bucket of each example)."""
  examples = np.asarray(examples, np.int64)
  mask = transitions.previously_engaged_mask(examples)  # [n, M]
  truth = transitions.next_cluster[examples]  # [n]
  hits = {name: hit_rate.novel_ranks(s, truth, mask) < k for name, s in scores.items()}
  return hits, hit_rate.bucket_of(hit_rate.tuple_train_counts(transitions, examples), rare_max)


def _in_bucket(buckets: np.ndarray, bucket: str) -> np.ndarray:
  """[n] bool: every example for "all", else those of `bucket`."""
  return np.ones(len(buckets), bool) if bucket == "all" else buckets == bucket
