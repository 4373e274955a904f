"""The few lines `explore run` ends with: each stage's time and headline numbers, and what next.

  == summary of /tmp/explore
  data         0.3 s   120 users, 300 items, 3517 interactions
  llm         71.2 s   hit@5: llm 0.500, blend 0.625, transition 0.625, ...
  seqrec      76.6 s   HR@10 (test) 0.100 vs most popular 0.308
  ...
  next: explore serve --run_dir=/tmp/explore  (...)

Numbers come from each complete stage's manifest summary and, for the `llm`
stage, its metrics.json (every planner's hit@5). A stage without a known
headline shows its time only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from explore import rundir as rundir_lib

Summary = Mapping[str, Any]


def _number(value: Any) -> str:
  return f"{value:.3f}" if isinstance(value, float) else str(value)


def _get(summary: Summary, *keys: str) -> Any:
  for key in keys:
    if not isinstance(summary, Mapping) or key not in summary:
      return None
    summary = summary[key]
  return summary


def _data(summary: Summary, _: Path) -> str | None:
  parts = [f"{summary[k]} {k}" for k in ("users", "items", "interactions") if k in summary]
  return ", ".join(parts) or None


def _clusters(summary: Summary, _: Path) -> str | None:
  levels = summary.get("levels")
  return None if levels is None else f"levels {levels}, exploring level {summary.get('exploration_level')}"


def _transitions(summary: Summary, _: Path) -> str | None:
  train, test = summary.get("num_examples_train"), summary.get("num_examples_test")
  return None if train is None else f"{train} train / {test} test examples"


def _pretrain(summary: Summary, _: Path) -> str | None:
  if summary.get("enabled") is False:
    return "off"
  first, last = summary.get("train_loss_first"), summary.get("train_loss_last")
  return None if first is None else f"loss {_number(first)} -> {_number(last)}"


def llm_hit5(stage_path: Path, summary: Summary) -> dict[str, float]:
  """Every planner's hit@5 (all test examples) from the stage's metrics.json, else its summary."""
  path = stage_path / "metrics.json"
  if path.exists():
    planners = json.loads(path.read_text()).get("planners") or {}
    hits = {name: _get(by_bucket, "all", "hit@5") for name, by_bucket in planners.items()}
    hits = {k: v for k, v in hits.items() if v is not None}
    if hits:
      return hits
  return dict(summary.get("hit@5") or {})


def _llm(summary: Summary, path: Path) -> str | None:
  hits = llm_hit5(path, summary)
  if not hits:
    return None
  first = ["llm"] if "llm" in hits else []
  order = first + sorted((n for n in hits if n != "llm"), key=lambda n: -hits[n])
  return "hit@5: " + ", ".join(f"{name} {hits[name]:.3f}" for name in order)


def _seqrec(summary: Summary, _: Path) -> str | None:
  model, popular = _get(summary, "model", "test", "hr@10"), _get(summary, "most_popular", "test",
                                                                 "hr@10")
  if model is None:
    return None
  versus = "" if popular is None else f" vs most popular {_number(popular)}"
  return f"HR@10 (test) {_number(model)}{versus}"


def _precompute(summary: Summary, _: Path) -> str | None:
  hits = summary.get("hit@5") or {}
  parts = [f"{summary['tuples']} tuples"] if "tuples" in summary else []
  parts += [f"hit@5 {name} {_number(v)}" for name, v in hits.items()]
  if "fraction_valid" in summary:
    parts.append(f"valid {_number(summary['fraction_valid'])}")
  return ", ".join(parts) or None


def _sim(summary: Summary, _: Path) -> str | None:
  discoveries = summary.get("discoveries") or {}
  if not discoveries:
    return None
  order = sorted(discoveries, key=lambda n: -discoveries[n])
  return "discoveries per user: " + ", ".join(f"{n} {discoveries[n]:.3f}" for n in order)


HEADLINES: dict[str, Callable[[Summary, Path], str | None]] = {
    "data": _data, "clusters": _clusters, "transitions": _transitions, "pretrain": _pretrain,
    "llm": _llm, "seqrec": _seqrec, "precompute": _precompute, "sim": _sim}


def _seconds(manifest: rundir_lib.StageManifest) -> float | None:
  if manifest.finished is None:
    return None
  return max(0.0, manifest.finished - manifest.started)


def _time(seconds: float | None) -> str:
  if seconds is None:
    return "-"
  return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def next_steps(run_dir: rundir_lib.RunDir, commands: Sequence[str] = ()) -> list[str]:
  """What to run next on this run directory, for the stages that are complete."""
  root = run_dir.root
  complete = {name for name in ("precompute", "llm", "report")
              if run_dir.manifest(name) is not None}
  lines = []
  if "precompute" in complete:
    lines.append(f"explore serve --run_dir={root}   (the recommend API and page;"
                 f" one user: explore recommend --run_dir={root} --user=ID)")
  if "report" in complete:
    lines.append(f"open {root}/report/report.html   (tables and plots of this run; report.md"
                 " beside it)")
  elif "report" in commands and "llm" in complete:  # its offline tables exist
    lines.append(f"explore report --gin.RUN_DIR=\"'{root}'\"   (tables and plots)")
  if "llm" in complete:
    lines.append(f"explore export --format=hf --out=DIR --run_dir={root}   (the planner as a"
                 " Hugging Face checkpoint)")
  lines.append(f"tensorboard --logdir={root}   (training curves)")
  return lines


def format_run_summary(run_dir: rundir_lib.RunDir, done: Sequence[tuple[str, str]],
                       commands: Sequence[str] = ()) -> str:
  """The summary block: one line per stage in `done` ((stage, action) pairs), then next steps."""
  rows = []
  for name, action in done:
    manifest = run_dir.manifest(name)
    if manifest is None:
      rows.append((name, "-", "not complete"))
      continue
    headline = HEADLINES.get(name)
    text = headline(manifest.summary, run_dir.complete_path(name)) if headline else None
    if action == "skip":
      text = f"(up to date) {text}" if text else "(up to date)"
    rows.append((name, _time(_seconds(manifest)), text or ""))
  width = max([len(name) for name, _, _ in rows] + [5])
  lines = [f"== summary of {run_dir.root}"]
  lines += [f"  {name:<{width}}  {time:>9}   {text}".rstrip() for name, time, text in rows]
  lines.append("next:")
  lines += [f"  {line}" for line in next_steps(run_dir, commands)]
  return "\n".join(lines)
