"""Training throughput of the sequence recommender: examples/s and s/epoch per gin config.

For each named config (`CONFIGS`: the run file and the seqrec model file the
`seqrec` stage uses) it builds the data the stage would train on (MovieLens
from --movielens_dir, or the synthetic quickstart platform), the training rows
and the trainer exactly as `explore.seqrec.training.fit` does, compiles and
warms up, then times --steps optimizer steps (`jax.block_until_ready` through
the trainer's own loss fetch). It prints one line per config and writes JSON to
--out. Training rows are the trainer's "examples"; targets/s counts the scored
(input, next item) pairs.

  python3 bench/seqrec_train.py --out=/tmp/seqrec_train_cpu.json
  python3 bench/seqrec_train.py --configs=movielens --steps=100 --out=$OUT/seqrec_train.json
  python3 bench/seqrec_train.py --configs=movielens,movielens_preln --steps=20  # the layouts

With cluster embeddings on (the quickstart default) the clusters stage is not
run: every item gets cluster `item % num_clusters`, which costs the same as the
real map. Imports neither TensorFlow nor seqio.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import gin
import jax
import numpy as np

from explore import gin_config
from explore import partitioning
from explore.data import movielens
from explore.data import synthetic
from explore.seqrec import data as data_lib
from explore.seqrec import training as training_lib
from explore.seqrec.stage import SeqRecStageOptions, model_config
from explore.seqrec.task import SoftmaxConfig

# name -> (gin files, number of clusters of the run file's exploration level); the data is the
# run file's: MovieLens for movielens.gin, the synthetic platform for quickstart.gin
CONFIGS = {
    "movielens": (("movielens.gin", "seqrec/movielens_sasrec.gin"), 128),
    "movielens_large": (("movielens.gin", "seqrec/movielens_sasrec_large.gin"), 128),
    "movielens_preln": (("movielens.gin", "seqrec/movielens_sasrec_preln.gin"), 128),
    "quickstart": (("quickstart.gin", "seqrec/quickstart.gin"), 256),
}


def _interactions(name: str, movielens_dir: str):
  if CONFIGS[name][0][0] == "movielens.gin":
    return movielens.load_movielens(path=movielens_dir).interactions
  _, interactions, _ = synthetic.generate()
  return interactions


def bench_config(name: str, movielens_dir: str, steps: int, warmup: int) -> dict:
  """Times `steps` training steps of config `name` after `warmup` (compiling) steps."""
  files, num_clusters = CONFIGS[name]
  gin.clear_config()
  paths = gin_config.search_paths()
  for path in paths:
    gin.add_config_file_search_path(str(path))
  # skip_unknown: the run files also bind the LLM's configurables, not imported here.
  gin.parse_config_files_and_bindings(
      [str(gin_config.resolve_gin_file(f, paths)) for f in files],
      [f"MOVIELENS_DIR = '{movielens_dir}'", "RUN_DIR = '/tmp/unused'"], skip_unknown=True)
  start = time.perf_counter()
  interactions = _interactions(name, movielens_dir)
  load_seconds = time.perf_counter() - start
  split = data_lib.leave_last_out(data_lib.user_sequences(interactions))
  config = model_config(interactions.num_items, num_clusters, SeqRecStageOptions())
  training, softmax = training_lib.SeqRecTraining(), SoftmaxConfig()
  clusters = (np.arange(interactions.num_items) % num_clusters if config.num_clusters else None)
  mesh = partitioning.create_mesh(partitioning.MeshConfig(data=1), jax.devices()[:1])
  with tempfile.TemporaryDirectory() as tmp:
    setup = training_lib.build_trainer(split, config, pathlib.Path(tmp), mesh, training, softmax,
                                       seed=0, item_clusters=clusters)
    trainer = setup.trainer
    trainer.config.log_every = 10 ** 9
    trainer.config.checkpoint_every = 10 ** 9
    trainer.config.train_steps = warmup
    trainer.train(setup.batches)  # compiles
    trainer.config.train_steps = warmup + steps
    start = time.perf_counter()
    trainer.train(setup.batches)
    seconds = time.perf_counter() - start
  targets = setup.windows["targets"]
  targets_per_row = float((targets > 0).sum()) / len(targets)
  rows = steps * training.batch_size
  return {
      "config": name, "gin_files": list(files), "users": split.sequences.num_users,
      "items": config.num_items, "embed_dim": config.embed_dim, "num_heads": config.num_heads,
      "mlp_dim": config.hidden_dim, "max_len": config.max_len, "softmax": softmax.kind,
      "window_stride": targets.shape[1], "rows_per_epoch": len(targets),
      "batch_size": training.batch_size, "steps_per_epoch": setup.steps_per_epoch,
      "mean_context": round(data_lib.mean_context(setup.windows), 2),
      "timed_steps": steps, "seconds": round(seconds, 3),
      "examples_per_s": round(rows / seconds, 1),
      "targets_per_s": round(rows * targets_per_row / seconds, 1),
      "s_per_epoch": round(setup.steps_per_epoch * seconds / steps, 2),
      "data_seconds": round(load_seconds, 2),
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default="movielens,quickstart",
                      help=f"comma-separated names from {sorted(CONFIGS)}")
  parser.add_argument("--movielens_dir", default="../shared/data/ml-latest-small")
  parser.add_argument("--steps", type=int, default=30, help="timed steps per config")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation)")
  parser.add_argument("--out", default=None, help="JSON output path")
  args = parser.parse_args(argv)
  names = [n for n in args.configs.split(",") if n]
  unknown = [n for n in names if n not in CONFIGS]
  if unknown or args.steps < 1 or args.warmup < 1:
    parser.error(f"--configs must name {sorted(CONFIGS)} (got {unknown}); --steps and --warmup "
                 "must be >= 1")
  device = jax.devices()[0]
  header = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": f"{device.platform} {device.device_kind}", "jax": jax.__version__,
            "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
  print(json.dumps(header))
  results = []
  for name in names:
    result = bench_config(name, args.movielens_dir, args.steps, args.warmup)
    results.append(result)
    print(f"{name}: {result['examples_per_s']} examples/s ({result['targets_per_s']} targets/s), "
          f"{result['s_per_epoch']} s/epoch ({result['steps_per_epoch']} steps of "
          f"{result['batch_size']}); {json.dumps(result)}", flush=True)
  header["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps({**header, "results": results}, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
