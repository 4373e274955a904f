"""Trie-constrained beam search throughput: prompts/s with and without the trie, and the table time.

For one decoder preset (`--model`, random init: the weights do not change the
cost) and one (batch, beams) point it times, in the same process and
interleaved round by round:
  full vocab    unconstrained beam search over all V tokens for exactly the
                trie's depth in steps (`decoding.full_vocab_beam_search_chunk`)
  trie, all     trie-constrained beam search running every trie level (no
                early stop): the same steps, so its time over the full-vocab
                time is the cost the constraint adds to a step
  trie          the production setting (early stop once no beam can enter
                the top-n), whose prompts/s gives the whole-table estimate:
                M * (M - 1) prompts (every ordered K=2 tuple) / prompts per s
and the trie's per-step work alone (the candidates of a dense and a CSR
level at the same shapes; the exclusion is computed once per request).

The clusters are M random token paths shaped like the quickstart's
descriptions (`--min_tokens`..`--max_tokens` tokens + EOS, the first token
drawn from sqrt(M) of them so that paths share prefixes as keyword lists do);
prompts are random ids of `--prompt_len` tokens, each excluding K random
clusters. It prints a table and writes JSON to --out. Imports neither
TensorFlow nor seqio.

  python3 bench/decode.py --out=/tmp/decode_tiny.json                        # CPU, quickstart
  python3 bench/decode.py --model=100m --num_clusters=1024 --batch=256 --out=$OUT/decode.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import shlex
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from flax import nnx
import jax
import numpy as np

from explore.llm import decoding
from explore.llm.decoder import Decoder
from explore.llm.trie import ClusterTrie
from llm_mfu import load_model_config
# pylint: enable=g-import-not-at-top,wrong-import-position

EOS = 1
# The quickstart's tokenizer has 812 pieces (docs/llm_results.md); presets keep their own.
QUICKSTART_VOCAB = 812


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="tiny", help="decoder preset: configs/models/<model>.gin")
  parser.add_argument("--vocab_size", type=int, default=0,
                      help="0: 812 (the quickstart tokenizer) for tiny, the preset's otherwise")
  parser.add_argument("--num_clusters", type=int, default=256, help="M")
  parser.add_argument("--min_tokens", type=int, default=3)
  parser.add_argument("--max_tokens", type=int, default=8, help="description tokens before EOS")
  parser.add_argument("--prompt_len", type=int, default=16)
  parser.add_argument("--batch", type=int, default=64, help="prompts per call")
  parser.add_argument("--num_beams", type=int, default=10)
  parser.add_argument("--top_n", type=int, default=10)
  parser.add_argument("--dense_levels", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
  parser.add_argument("--dtype", default="auto",
                      help="auto: bfloat16 on accelerators, float32 on CPU")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  for name in ("num_clusters", "min_tokens", "prompt_len", "batch", "num_beams", "top_n",
               "repeats"):
    if getattr(args, name) < 1:
      raise ValueError(f"--{name}={getattr(args, name)} must be >= 1")
  if args.max_tokens < args.min_tokens or args.top_n > args.num_beams:
    raise ValueError("need --min_tokens <= --max_tokens and --top_n <= --num_beams")
  return args


def cluster_paths(rng: np.random.Generator, m: int, vocab: int, low: int, high: int
                  ) -> list[list[int]]:
  """M distinct random token paths (+ EOS); first tokens from sqrt(M) ids to share prefixes."""
  heads = rng.choice(np.arange(2, vocab), size=max(2, int(np.sqrt(m))), replace=False)
  paths: dict[tuple[int, ...], None] = {}
  while len(paths) < m:
    body = rng.integers(2, vocab, rng.integers(low, high + 1))
    body[0] = rng.choice(heads)
    paths[tuple(body.tolist()) + (EOS,)] = None
  return [list(p) for p in paths]


def timed(fn, repeats: int) -> tuple[float, list[float]]:
  """(first call seconds incl. compilation, per-call seconds of `repeats` later calls)."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return first, times


def trie_step_seconds(trie: ClusterTrie, batch: int, beams: int, vocab: int, k: int,
                      repeats: int) -> dict[str, float]:
  """Median seconds of the trie's own work per step at a dense and a CSR level."""
  arrays = trie.arrays()
  key = jax.random.key(1)
  log_probs = jax.nn.log_softmax(jax.random.normal(key, (batch, beams, vocab)))  # [b, k, V]
  nodes = jax.random.randint(key, (batch, beams), 0, trie.num_nodes)  # [b, k]
  exclude = jax.random.randint(key, (batch, k), 0, trie.num_clusters)  # [b, K]
  exclusion = jax.jit(arrays.exclusion)(exclude)  # once per request, not per step
  out = {}
  for name, level in (("dense", 0), ("csr", max(trie.dense_levels, 1))):
    if level >= trie.depth or (name == "dense" and trie.dense_levels == 0):
      continue
    step = jax.jit(lambda lp, n, x, level=level: arrays.candidates(level, lp, n, x).log_probs)
    _, times = timed(lambda: step(log_probs, nodes, exclusion), repeats)
    out[name] = statistics.median(times)
  return out


def run(args: argparse.Namespace, argv: list[str]) -> dict:
  device = jax.devices()[0]
  dtype = args.dtype if args.dtype != "auto" else (
      "float32" if device.platform == "cpu" else "bfloat16")
  vocab = args.vocab_size or (QUICKSTART_VOCAB if args.model == "tiny" else 0)
  overrides = dict(dtype=dtype) | (dict(vocab_size=vocab) if vocab else {})
  config = load_model_config(args.model, [], **overrides)
  model = Decoder(config, rngs=nnx.Rngs(args.seed))
  rng = np.random.default_rng(args.seed)
  paths = cluster_paths(rng, args.num_clusters, config.vocab_size, args.min_tokens,
                        args.max_tokens)
  trie = ClusterTrie.build(paths, EOS, config.vocab_size, dense_levels=args.dense_levels)
  prompts = rng.integers(2, config.vocab_size, (args.batch, args.prompt_len)).astype(np.int32)
  prompts[:, -1] = EOS
  lengths = np.full(args.batch, args.prompt_len, np.int32)
  exclude = np.stack([rng.choice(args.num_clusters, 2, replace=False)
                      for _ in range(args.batch)]).astype(np.int32)  # [b, K=2]

  graphdef, state = nnx.split(model)
  full = jax.jit(lambda s, p, l: decoding.full_vocab_beam_search_chunk(
      nnx.merge(graphdef, s), p, l, args.num_beams, trie.depth))
  variants = {
      "full vocab": lambda: np.asarray(full(state, prompts, lengths)[1]),
      "trie, all levels": decoding.ConstrainedDecoder(
          model, trie, args.num_beams, args.top_n, prompts_per_chunk=args.batch,
          early_stop=False),
      "trie": decoding.ConstrainedDecoder(model, trie, args.num_beams, args.top_n,
                                          prompts_per_chunk=args.batch),
  }
  calls = {name: (fn if name == "full vocab" else (lambda fn=fn: fn(prompts, lengths, exclude)))
           for name, fn in variants.items()}
  compile_s = {name: timed(call, 0)[0] for name, call in calls.items()}
  times: dict[str, list[float]] = {name: [] for name in calls}
  for _ in range(args.repeats):  # interleaved rounds: load changes hit every variant alike
    for name, call in calls.items():
      times[name] += timed(call, 1)[1]
  clusters, _ = calls["trie"]()
  valid = (clusters >= 0) & ~np.any(clusters[:, :, None] == exclude[:, None, :], axis=2)
  rows = []
  for name in calls:
    median = statistics.median(times[name])
    rows.append({"variant": name, "median_s": median, "times_s": times[name],
                 "prompts_per_s": args.batch / median,
                 "ms_per_step": median / trie.depth * 1e3, "first_call_s": compile_s[name]})
  by_name = {row["variant"]: row for row in rows}
  m = args.num_clusters
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": "python3 bench/decode.py " + " ".join(shlex.quote(a) for a in argv),
      "device_kind": device.device_kind, "platform": device.platform,
      "jax_version": jax.__version__, "model": args.model, "params": config.num_params(),
      "vocab_size": config.vocab_size, "dtype": dtype, "num_clusters": m,
      "trie": {"depth": trie.depth, "nodes": trie.num_nodes, "dense_levels": trie.dense_levels,
               "max_branch": trie.numpy["max_branch"].tolist()},
      "batch": args.batch, "num_beams": args.num_beams, "top_n": args.top_n,
      "prompt_len": args.prompt_len, "rows": rows,
      "trie_over_full_vocab": by_name["trie, all levels"]["median_s"]
      / by_name["full vocab"]["median_s"],
      "trie_step_only_s": trie_step_seconds(trie, args.batch, args.num_beams,
                                            config.vocab_size, 2, args.repeats),
      "valid_output_rate": float(valid.mean()),
      "table_prompts": m * (m - 1),
      "table_estimate_s": m * (m - 1) / by_name["trie"]["prompts_per_s"],
  }


def print_table(record: dict) -> None:
  print(f"\nTrie-constrained beam search: model={record['model']} ({record['params'] / 1e6:.2f}M"
        f" params, vocab {record['vocab_size']}, {record['dtype']}), M={record['num_clusters']},"
        f" trie depth {record['trie']['depth']} ({record['trie']['nodes']} nodes),"
        f" batch {record['batch']} x {record['num_beams']} beams, top {record['top_n']}")
  print(f"device: {record['device_kind']} ({record['platform']}), jax {record['jax_version']},"
        f" {record['date']}\ncommand: {record['command']}")
  print("\n| variant | median s/batch | prompts/s | ms/step | first call s |")
  print("|---|---|---|---|---|")
  for row in record["rows"]:
    print(f"| {row['variant']} | {row['median_s']:.4f} | {row['prompts_per_s']:,.0f} |"
          f" {row['ms_per_step']:.2f} | {row['first_call_s']:.1f} |")
  step = ", ".join(f"{k} level {v * 1e3:.3f} ms" for k, v in record["trie_step_only_s"].items())
  print(f"\ntrie (all levels) / full vocab, same steps: {record['trie_over_full_vocab']:.3f}"
        f" ({record['trie_over_full_vocab'] - 1:+.1%}); trie work alone per step: {step}")
  print(f"valid, non-excluded outputs: {record['valid_output_rate']:.1%}")
  print(f"whole table: {record['table_prompts']:,} prompts -> {record['table_estimate_s']:.1f} s"
        " at the trie's prompts/s")


def main(argv: list[str]) -> dict:
  args = parse_args(argv)
  record = run(args, argv)
  print_table(record)
  if args.out:
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
  return record


if __name__ == "__main__":
  main(sys.argv[1:])
