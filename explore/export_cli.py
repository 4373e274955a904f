r"""`explore export`: the trained planner of a run as a Hugging Face checkpoint folder.

  explore export --format=hf --out=/tmp/planner_hf --run_dir=/tmp/explore
  explore export --format=hf --out=/tmp/planner_hf --gin_file=quickstart.gin \
      --gin.RUN_DIR="'/tmp/explore'"

The decoder of the run's complete `llm` stage (LoRA adapters merged) is
written with its tokenizer (`checkpoint_export.export_planner`), so
`transformers.AutoModelForCausalLM.from_pretrained(OUT)` and
`AutoTokenizer.from_pretrained(OUT)` load it. This module defines its flags
without importing JAX.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from absl import flags

COMMANDS = ("export",)
FORMATS = ("hf",)

flags.DEFINE_string("format", None, f"export: the format to write, one of {list(FORMATS)} "
                    "(hf: a Hugging Face safetensors folder).")
flags.DEFINE_string("out", None, "export: the folder to write (new, or empty).")
FLAGS = flags.FLAGS


class ExportCommandError(ValueError):
  """A bad `explore export` invocation: names the flag or input and the problem."""


def run_command(command: Sequence[str], run_dir: str | None) -> int:
  """Runs `explore export` on the run directory; returns the exit status."""
  from explore.llm import checkpoint_export  # pylint: disable=g-import-not-at-top
  rest = list(command[1:])
  if rest:
    raise ExportCommandError(f"explore export takes flags only, got extra arguments {rest}")
  if FLAGS.format is None:
    raise ExportCommandError(f"explore export needs --format (one of {list(FORMATS)})")
  if FLAGS.format not in FORMATS:
    raise ExportCommandError(f"explore export: unknown --format={FLAGS.format!r}; known:"
                             f" {list(FORMATS)}")
  if not FLAGS.out:
    raise ExportCommandError("explore export needs --out=DIR (a new or empty folder)")
  out = checkpoint_export.check_export_target(FLAGS.out)
  run_dir = FLAGS.run_dir or run_dir
  if not run_dir:
    raise ExportCommandError("explore export needs --run_dir=DIR (or RUN_DIR from --gin_file)")

  from explore import rundir  # pylint: disable=g-import-not-at-top
  from explore.llm import stage as llm_stage  # pylint: disable=g-import-not-at-top
  run = rundir.RunDir(run_dir)
  state = run.state(llm_stage.LLM) if Path(run_dir).is_dir() else "missing"
  if state != "complete":
    raise ExportCommandError(
        f"explore export: {run_dir} has no complete llm stage (state: {state}); train it first:"
        f" explore llm --gin.RUN_DIR=\"'{run_dir}'\" ...")
  planner = llm_stage.load_planner(run.complete_path(llm_stage.LLM))
  folder = checkpoint_export.export_planner(planner, out)
  config = planner.config
  print(f"exported the llm stage's decoder ({config.family}, {config.num_layers} layers,"
        f" vocab {config.vocab_size}{', LoRA merged' if config.lora_rank else ''}) to {folder}")
  print(f"load it with: transformers.AutoModelForCausalLM.from_pretrained('{folder}')")
  return 0
