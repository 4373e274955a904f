"""The trained decoder as a planner: `scores(history [b, K]) -> [b, M]`, reopened from disk.

`LlmPlanner` wears the face of the baselines in `explore.eval.planners`, so
evaluation, the precompute of the tuple table and serving take any planner.
Its score of cluster c after a history is the decoder's teacher-forced
log-likelihood of c's description (+ EOS) after the history's prompt
(`explore.llm.scoring`, the exact reference of constrained decoding).

A trained planner folder (the `llm` stage writes one) holds:
  planner.json          DecoderConfig, bos id, K, length_normalize and the
                        cluster descriptions the decoder was trained on
  tokenizer/            spm.model (trained from scratch), or the pretrained
                        checkpoint's tokenizer files + special_tokens.json
  model/                the trainer's model_dir; the latest `checkpoint_<step>`
                        holds the trained parameters (orbax), or the one
                        planner.json's "step" names (chosen on validation,
                        `LlmStageOptions.select_every`)
  merged/               with planner.json "model_dir": "merged", the weights
                        interpolated with the pretrained start
                        (`LlmStageOptions.interpolate`), reopened instead of model/
`LlmPlanner.load(folder, mesh)` reopens all of it without training anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from explore import artifacts
from explore.llm import checkpoint_tokenizer
from explore.llm import features
from explore.llm import scoring
from explore.llm import tokenizer as tokenizer_lib
from explore.llm.decoder import Decoder
from explore.llm.decoder_config import DecoderConfig
from explore.transitions.task_source import format_history_prompt

PLANNER_FILE = "planner.json"
TOKENIZER_DIR = "tokenizer"
TOKENIZER = "tokenizer/spm.model"
MODEL_DIR = "model"
FORMAT_VERSION = 1


class LlmPlannerError(ValueError):
  """A trained planner folder that cannot be reopened, or a history it cannot score."""


def load_tokenizer(folder: str | Path) -> tokenizer_lib.TextTokenizer:
  """The planner's tokenizer: its trained SentencePiece model, or the checkpoint's copy."""
  folder = Path(folder)
  if (folder / TOKENIZER).exists():
    return tokenizer_lib.Tokenizer.from_file(folder / TOKENIZER)
  return checkpoint_tokenizer.load_saved_tokenizer(folder / TOKENIZER_DIR)


def history_prompts(descriptions: Sequence[str], history: np.ndarray) -> list[str]:
  """The prompt of each history row ([b, K] cluster ids, oldest first)."""
  return [format_history_prompt([descriptions[c] for c in row]) for row in history.tolist()]


def _unique_row_scores(scorer: scoring.CandidateScorer, tokenizer: tokenizer_lib.TextTokenizer,
                       descriptions: Sequence[str], history: np.ndarray) -> np.ndarray:
  """[n, M] scores of each history row; each distinct tuple is scored once."""
  if not len(history):
    return np.zeros((0, len(descriptions)), np.float32)
  tuples, inverse = np.unique(history, axis=0, return_inverse=True)  # [u, K], [n]
  prompts, lengths = scoring.pad_token_lists(
      tokenizer.encode_batch(history_prompts(descriptions, tuples), add_eos=True), "prompts")
  return scorer(prompts, lengths)[inverse.reshape(-1)]  # [n, M]


def candidate_scorer(model: Decoder, tokenizer: tokenizer_lib.TextTokenizer,
                     descriptions: Sequence[str], length_normalize: bool = False,
                     prompts_per_chunk: int | None = None,
                     bos_id: int = features.BOS_ID) -> scoring.CandidateScorer:
  """The compiled scorer of every description (+ EOS) after a batch of prompts."""
  candidates, lengths = scoring.pad_token_lists(
      tokenizer.encode_batch(list(descriptions), add_eos=True), "descriptions")
  return scoring.CandidateScorer(model, candidates, lengths, length_normalize,
                                 prompts_per_chunk, bos_id)


def llm_scores(model: Decoder, tokenizer: tokenizer_lib.TextTokenizer,
               descriptions: Sequence[str], history: np.ndarray, length_normalize: bool = False,
               prompts_per_chunk: int | None = None, bos_id: int = features.BOS_ID
               ) -> np.ndarray:
  """[n, M] the decoder's score of every cluster after each history's ([n, K]) prompt."""
  scorer = candidate_scorer(model, tokenizer, descriptions, length_normalize,
                            prompts_per_chunk, bos_id)
  return _unique_row_scores(scorer, tokenizer, descriptions, np.asarray(history))


def _config_to_json(config: DecoderConfig) -> dict[str, Any]:
  fields = dataclasses.asdict(config)
  fields["lora_targets"] = list(config.lora_targets)
  return fields


def _config_from_json(fields: dict[str, Any], path: Path) -> DecoderConfig:
  known = {f.name for f in dataclasses.fields(DecoderConfig)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise LlmPlannerError(f"{path}: decoder_config has fields this code does not know: {unknown}")
  fields = dict(fields)
  if "lora_targets" in fields:
    fields["lora_targets"] = tuple(fields["lora_targets"])
  return DecoderConfig(**fields)


def save_planner_spec(folder: str | Path, config: DecoderConfig, bos_id: int, k: int,
                      descriptions: Sequence[str], length_normalize: bool,
                      step: int | None = None, model_dir: str | None = None) -> Path:
  """Writes `planner.json`: what reopening the trained planner needs besides the weights.

  `step` pins the checkpoint the planner reopens (None: the latest);
  `model_dir` names the subfolder of `folder` holding it (None: model/).
  """
  if model_dir is not None:
    _check_model_dir(model_dir, Path(folder) / PLANNER_FILE)
  spec = {"format_version": FORMAT_VERSION, "decoder_config": _config_to_json(config),
          "bos_id": int(bos_id), "k": int(k), "length_normalize": bool(length_normalize),
          "descriptions": [str(d) for d in descriptions]}
  if step is not None:
    spec["step"] = int(step)
  if model_dir is not None:
    spec["model_dir"] = model_dir
  path = Path(folder) / PLANNER_FILE
  artifacts.atomic_write_json(path, spec)
  return path


def _check_model_dir(name: Any, path: Path) -> str:
  """`name` if it is one plain subfolder name of the planner folder, else LlmPlannerError."""
  if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
    raise LlmPlannerError(f"{path}: model_dir {name!r} must name a subfolder of the planner"
                          " folder (e.g. 'model' or 'merged')")
  return name


def _read_spec(folder: Path) -> dict[str, Any]:
  path = folder / PLANNER_FILE
  spec = artifacts.read_json(path, error=LlmPlannerError)
  if spec.get("format_version") != FORMAT_VERSION:
    raise LlmPlannerError(f"{path}: format_version {spec.get('format_version')} is not "
                          f"{FORMAT_VERSION}; rerun the llm stage (explore llm --force)")
  missing = [key for key in ("decoder_config", "bos_id", "k", "length_normalize",
                             "descriptions") if key not in spec]
  if missing:
    raise LlmPlannerError(f"{path}: lacks {missing}; rerun the llm stage (explore llm --force)")
  return spec


def restore_decoder(config: DecoderConfig, model_dir: Path, mesh, step: int | None = None
                    ) -> tuple[Decoder, int]:
  """(decoder with checkpoint `step`'s parameters (None: the latest) placed on `mesh`, its step)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from explore import partitioning  # pylint: disable=g-import-not-at-top
  from explore.train import checkpoints as checkpoints_lib  # pylint: disable=g-import-not-at-top
  from explore.train import train_step as step_lib  # pylint: disable=g-import-not-at-top
  steps = checkpoints_lib.checkpoint_steps(model_dir)
  if not steps:
    raise LlmPlannerError(f"{model_dir}: no checkpoint_<step> folder; the llm stage did not "
                          "finish training (rerun it: explore llm --force)")
  if step is not None and step not in steps:
    raise LlmPlannerError(f"{model_dir}: the planner's checkpoint_{step} is missing (there are "
                          f"{[f'checkpoint_{s}' for s in steps]}); rerun the llm stage "
                          "(explore llm --force)")
  model = partitioning.create_sharded_module(lambda: Decoder(config, rngs=nnx.Rngs(params=0)),
                                             mesh)
  graphdef, params, extras = step_lib.split_model(model)
  target = step_lib.TrainState(params=params, extras=extras, opt_state=None, step=None)
  checkpoints = checkpoints_lib.TrainCheckpoints(model_dir, keep=None, async_save=False)
  folder = model_dir / f"{checkpoints_lib.STEP_PREFIX}_{steps[-1] if step is None else step}"
  try:
    restored, step, _ = checkpoints.restore(target, folder, weights_only=True)
  except Exception as e:  # orbax and tensorstore raise many types on damaged files
    raise LlmPlannerError(f"{folder}: cannot restore the trained decoder ({type(e).__name__}:"
                          f" {str(e).splitlines()[0] if str(e) else e!r}); the checkpoint is"
                          " damaged or from another model; rerun the llm stage") from e
  finally:
    checkpoints.close()
  return nnx.merge(graphdef, restored["params"], restored.get("extras", extras)), step


def _folder_fingerprint(folder: Path) -> list[list]:
  return [[p.relative_to(folder).as_posix(), p.stat().st_size]
          for p in sorted(folder.rglob("*")) if p.is_file()]


@dataclasses.dataclass
class LlmPlanner:
  """The trained decoder behind `scores(history [b, K]) -> [b, M]`, plus what decoding needs."""

  model: Decoder
  tokenizer: tokenizer_lib.TextTokenizer
  descriptions: list[str]
  config: DecoderConfig
  k: int
  bos_id: int = features.BOS_ID
  length_normalize: bool = False
  prompts_per_chunk: int | None = None
  checkpoint_fingerprint: str = ""
  name = "llm"

  def __post_init__(self):
    self._scorer: scoring.CandidateScorer | None = None

  @property
  def num_clusters(self) -> int:
    return len(self.descriptions)

  @classmethod
  def load(cls, folder: str | Path, mesh=None, prompts_per_chunk: int | None = None
           ) -> "LlmPlanner":
    """Reopens a trained planner folder (see the module docstring) on `mesh` (None: default)."""
    folder = Path(folder)
    if not folder.is_dir():
      raise LlmPlannerError(f"{folder}: not a trained planner folder (it does not exist)")
    spec = _read_spec(folder)
    config = _config_from_json(spec["decoder_config"], folder / PLANNER_FILE)
    if mesh is None:
      from explore import partitioning  # pylint: disable=g-import-not-at-top
      mesh = partitioning.create_mesh(partitioning.MeshConfig())
    tokenizer = load_tokenizer(folder)
    model_dir = folder / _check_model_dir(spec.get("model_dir", MODEL_DIR), folder / PLANNER_FILE)
    model, step = restore_decoder(config, model_dir, mesh, spec.get("step"))
    checkpoint = model_dir / f"checkpoint_{step}"
    blob = json.dumps([spec, step, _folder_fingerprint(checkpoint)], sort_keys=True)
    return cls(model=model, tokenizer=tokenizer, descriptions=list(spec["descriptions"]),
               config=config, k=int(spec["k"]), bos_id=int(spec["bos_id"]),
               length_normalize=bool(spec["length_normalize"]),
               prompts_per_chunk=prompts_per_chunk,
               checkpoint_fingerprint=hashlib.sha256(blob.encode()).hexdigest()[:16])

  def check_history(self, history: np.ndarray) -> np.ndarray:
    """[b, K] int64 history, or LlmPlannerError naming what is wrong with it."""
    history = np.asarray(history)
    if history.ndim != 2 or history.shape[1] != self.k:
      raise LlmPlannerError(f"llm: history must be [b, {self.k}], got shape {history.shape}")
    if history.size and (history.min() < 0 or history.max() >= self.num_clusters):
      raise LlmPlannerError(f"llm: history holds cluster ids outside [0, {self.num_clusters})")
    return history.astype(np.int64)

  def prompt_ids(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([b, P] int32 right-padded prompt ids incl. EOS, [b] int32 lengths) of history rows."""
    history = self.check_history(history)
    return scoring.pad_token_lists(
        self.tokenizer.encode_batch(history_prompts(self.descriptions, history), add_eos=True),
        "prompts")

  def description_ids(self) -> list[list[int]]:
    """Each cluster's description ids, ending with EOS (the trie's token paths)."""
    return self.tokenizer.encode_batch(self.descriptions, add_eos=True)

  def scores(self, history: np.ndarray) -> np.ndarray:
    """[b, M] float32 log-likelihood of each cluster's description after each history."""
    history = self.check_history(history)
    if self._scorer is None:
      self._scorer = candidate_scorer(self.model, self.tokenizer, self.descriptions,
                                      self.length_normalize, self.prompts_per_chunk, self.bos_id)
    return _unique_row_scores(self._scorer, self.tokenizer, self.descriptions, history)
