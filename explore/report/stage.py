"""The `report` stage: one run's results as `report.md` and `report.html` with tables and plots.

Reads every other stage's artifacts through that stage's own loader (metrics,
transitions) and each stage's manifest (times); writes into RUN_DIR/report/:
  report.md     Markdown: the tables, figures linked as the PNG files beside it
  report.html   the same, one self-contained page (the PNGs embedded as base64)
  *.png         the figures (matplotlib, Agg backend)
Sections: stage times; the LLM planner's offline hit@k next to the count
planners (overall and by how often the tuple was seen); the precomputed
table's validity; the sequence recommender's HR@10 / NDCG@10 against
most-popular; the heatmap of novel cluster transitions; the closed-loop
simulator's per-policy totals with paired 95% intervals, per-round curves of
novelty (new user-cluster pairs, discoveries) and enjoyment (satisfaction) with
95% bands, and bars per policy. On real logs there is no world and the sim
stage records that it skipped: the report says so and shows the offline parts.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from absl import logging
import numpy as np

from explore import artifacts
from explore import rundir as rundir_lib
from explore import stages
from explore.llm import stage as llm_stage
from explore.precompute import stage as precompute_stage
from explore.report import document
from explore.report import plots
from explore.seqrec import stage as seqrec_stage
from explore.sim import stage as sim_stage
from explore.transitions import stage as transitions_stage

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
# The stages whose artifacts the report reads (`report` runs after all of them).
READS = ("data", "clusters", "transitions", "llm", "seqrec", "precompute", "sim")
NO_WORLD = ("the simulator needs a synthetic world (data_source.kind='synthetic'); this run has "
            "none")
SIM_METRICS = (  # (key in the sim metrics, label, unit of a per-user total)
    ("ueuc", "UEUC", "new user-cluster pairs per user"),
    ("discoveries", "discoveries", "hidden interests found per user"),
    ("clicks", "clicks", "expected clicks per user"),
    ("satisfaction", "satisfaction", "final satisfaction (EMA of watch - threshold)"),
)
ROUND_CURVES = (  # (per-round key, file, y label, title)
    ("new_clusters", "sim_round_ueuc.png",
     "new user-cluster pairs per user", "Novelty: UEUC per round"),
    ("discoveries", "sim_round_discoveries.png",
     "hidden interests found per user", "Novelty: discoveries per round"),
    ("satisfaction", "sim_round_satisfaction.png",
     "satisfaction (EMA of watch - threshold)", "Enjoyment: satisfaction per round"),
)


class ReportError(ValueError):
  """A stage's artifact the report needs is missing or unreadable (names the stage to run)."""


def fmt(value: Any) -> str:
  """A number as the report writes it (4 decimals); '-' for None."""
  if value is None:
    return "-"
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    return str(int(value))
  return f"{float(value):.4f}"


def fmt_interval(d: Mapping[str, float], signed: bool = False) -> str:
  """`mean [low, high]` (signed for a difference)."""
  f = (lambda x: f"{x:+.4f}") if signed else fmt
  return f"{f(d['mean'])} [{f(d['low'])}, {f(d['high'])}]"


def _load(stage: str, what: str, loader: Callable[[], Any]) -> Any:
  try:
    return loader()
  except (FileNotFoundError, NotADirectoryError, artifacts.ArtifactError) as e:
    raise ReportError(f"the report needs {what} from the {stage!r} stage, which is missing or "
                      f"unreadable ({e}); run `explore {stage}` (or `explore {stage} --force`)"
                      ) from None


def _stage_times(run_dir: rundir_lib.RunDir) -> list[document.Block]:
  rows = []
  for stage in stages.execution_order(sorted(stages.registered_stages())):
    manifest = run_dir.manifest(stage.name) if stage.name != "report" else None
    if manifest is None or manifest.finished is None:
      continue
    finished = datetime.datetime.fromtimestamp(manifest.finished, datetime.timezone.utc)
    rows.append([stage.name, f"{manifest.finished - manifest.started:.1f}",
                 finished.strftime("%Y-%m-%d %H:%M:%S")])
  return [document.Heading("Stage times"),
          document.Paragraph("Wall-clock seconds from each stage's manifest (start to finish of "
                             "its last run; a resumed stage counts from its first start)."),
          document.Table(["stage", "seconds", "finished (UTC)"], rows)]


def _llm_section(metrics: Mapping[str, Any], folder: Path) -> list[document.Block]:
  planners = metrics["planners"]
  buckets = [b for b in ("all", "unseen", "rare", "frequent")
             if b in next(iter(planners.values()))]
  ks = sorted(next(iter(planners.values()))["all"], key=lambda k: int(k.partition("@")[2]))
  header = ["planner"] + [f"{k} ({b})" for b in buckets for k in ks if b == "all" or k == "hit@5"]
  names = sorted(planners, key=lambda n: (n != "llm", n))  # the LLM first
  rows = [[name] + [fmt(planners[name][b][k]) for b in buckets for k in ks
                    if b == "all" or k == "hit@5"] for name in names]
  examples = metrics.get("examples", {})
  counts = ", ".join(f"{b} {examples[b]}" for b in buckets if b in examples)
  plots.grouped_bars(folder / "llm_hit5.png",
                     {name: {b: planners[name][b].get("hit@5") for b in buckets}
                      for name in names},
                     ylabel="novel-cluster hit@5 (fraction of test examples)",
                     xlabel="test tuples, by how often seen in training", title="Offline hit@5")
  return [document.Heading("Offline: the LLM planner and the count planners"),
          document.Paragraph(
              "Novel-cluster hit@k on the llm stage's evaluated test examples (the clusters a "
              "user already engaged with removed); buckets by how often the test tuple was seen "
              f"in training (rare: at most {metrics.get('rare_max', '?')} times). Examples: "
              f"{counts}."),
          document.Table(header, rows),
          document.Figure("llm_hit5.png", "hit@5 per planner, overall and by bucket")]


def _precompute_section(metrics: Mapping[str, Any]) -> list[document.Block]:
  validity, agreement = metrics["validity"], metrics["agreement"]
  hit5 = {n: metrics["planners"][n]["all"]["hit@5"] for n in metrics["planners"]}
  rows = [["tuples", fmt(metrics["tuples"])], ["generator", str(metrics["generator"])],
          ["fraction valid", fmt(validity["fraction_valid"])],
          ["fraction in the history", fmt(validity["fraction_history"])],
          ["top-1 agreement with the exact scorer", fmt(agreement["top1_agreement"])]]
  rows += [[f"hit@5 ({name})", fmt(value)] for name, value in hit5.items()]
  return [document.Heading("Offline: the precomputed table"),
          document.Paragraph("The LLM's top-n novel clusters for every K-tuple (the table the "
                             "`llm` policy of the simulator plays)."),
          document.Table(["measure", "value"], rows)]


def _seqrec_section(metrics: Mapping[str, Any]) -> list[document.Block]:
  rows = []
  for name, source in (("sequence recommender", metrics["model"]),
                       ("most popular", metrics["most_popular"])):
    for split in ("val", "test"):
      values = source.get(split) or {}
      rows.append([name, split, fmt(values.get("hr@10")), fmt(values.get("ndcg@10"))])
  return [document.Heading("Offline: the sequence recommender"),
          document.Paragraph(f"Leave-last-out over {metrics.get('evaluated_users', '?')} users; "
                             f"best epoch {metrics.get('best_epoch', '?')}."),
          document.Table(["model", "split", "HR@10", "NDCG@10"], rows)]


def transition_counts(transitions) -> np.ndarray:
  """[M, M] number of novel transitions from each last history cluster to each next cluster."""
  m = transitions.num_clusters
  counts = np.zeros((m, m), np.int64)
  np.add.at(counts, (transitions.history[:, -1], transitions.next_cluster), 1)
  return counts


def _transitions_section(transitions, folder: Path) -> list[document.Block]:
  counts = transition_counts(transitions)
  plots.transition_heatmap(folder / "transitions_heatmap.png", counts,
                           f"Novel cluster transitions (M={transitions.num_clusters}, "
                           f"K={transitions.k})")
  nonzero = int((counts > 0).sum())
  return [document.Heading("Cluster transitions"),
          document.Paragraph(f"{len(transitions)} novel transitions (train and test) from the "
                             f"last cluster of the history to the next novel cluster; "
                             f"{nonzero} of {counts.size} cluster pairs occur."),
          document.Figure("transitions_heatmap.png",
                          "novel transitions: last history cluster -> next novel cluster")]


def _sim_section(metrics: Mapping[str, Any], folder: Path) -> list[document.Block]:
  blocks: list[document.Block] = [document.Heading("Closed-loop simulator")]
  if "skipped" in metrics:
    return blocks + [document.Paragraph(f"Not simulated: {NO_WORLD}. ({metrics['skipped']})")]
  settings, versus = metrics["settings"], metrics["versus"]
  blocks.append(document.Paragraph(
      f"{settings['users']} users x {settings['replicas']} replicas, {settings['rounds']} "
      f"rounds, slates of {settings['slate_size']} items of which {settings['explore_slots']} "
      f"are chosen by the policy; common random numbers. Each cell: the policy's mean per user "
      f"[95% CI], then its paired difference with {versus} [95% CI]."))
  header = ["policy"] + [f"{label}" for _, label, _ in SIM_METRICS] + [
      f"{label} - {versus}" for _, label, _ in SIM_METRICS]
  names = settings["policies"]  # in the order they played (the JSON's keys are sorted)
  rows = []
  for name in names:
    row, diff = metrics["policies"][name], metrics["differences"][name]
    rows.append([name] + [fmt_interval(row[key]) for key, _, _ in SIM_METRICS]
                + [fmt_interval(diff[key], signed=True) for key, _, _ in SIM_METRICS])
  blocks.append(document.Table(header, rows))
  for key, file, ylabel, title in ROUND_CURVES:
    curves = {name: metrics["per_round"][name][key] for name in names}
    plots.round_curves(folder / file, curves, ylabel, title)
    blocks.append(document.Figure(file, f"{title}: mean per user with 95% CI bands"))
  for key, label, unit in SIM_METRICS:
    file = f"sim_bars_{key}.png"
    plots.policy_bars(folder / file, {n: metrics["policies"][n][key] for n in names}, unit,
                      f"{label} per policy")
    blocks.append(document.Figure(file, f"{label} per policy (mean, 95% CI)"))
  return blocks


def build_report(run_dir: rundir_lib.RunDir, inputs: Mapping[str, Path], folder: Path
                 ) -> dict[str, Any]:
  """Writes report.md, report.html and the figures into `folder`; returns what it holds.

  inputs: stage name -> its complete folder, for every stage of READS.
  """
  missing = [s for s in READS if s not in inputs or not Path(inputs[s]).is_dir()]
  if missing:
    raise ReportError(f"the report needs the {missing[0]!r} stage, which {run_dir.root} does "
                      f"not hold; run `explore {missing[0]}` (or `explore report`)")
  folder.mkdir(parents=True, exist_ok=True)
  llm = _load("llm", "the offline hit@k", lambda: llm_stage.load_metrics(inputs["llm"]))
  seqrec = _load("seqrec", "HR@10 / NDCG@10", lambda: seqrec_stage.load_metrics(inputs["seqrec"]))
  precompute = _load("precompute", "the table's metrics",
                     lambda: precompute_stage.load_metrics(inputs["precompute"]))
  sim = _load("sim", "the simulator's metrics", lambda: sim_stage.load_metrics(inputs["sim"]))
  transitions = _load("transitions", "the novel transitions",
                      lambda: transitions_stage.load_transitions(inputs["transitions"]))
  generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  blocks: list[document.Block] = [
      document.Heading("explore run report", 1),
      document.Paragraph(f"Run directory `{run_dir.root}`, generated {generated}. "
                         "Built by `explore report` from the run's artifacts."),
  ]
  blocks += _stage_times(run_dir)
  blocks += _llm_section(llm, folder)
  blocks += _precompute_section(precompute)
  blocks += _seqrec_section(seqrec)
  blocks += _transitions_section(transitions, folder)
  blocks += _sim_section(sim, folder)
  (folder / REPORT_MD).write_text(document.to_markdown(blocks))
  (folder / REPORT_HTML).write_text(document.to_html(blocks, folder, "explore run report"))
  figures = [b.file for b in blocks if isinstance(b, document.Figure)]
  return {"figures": figures, "simulated": "skipped" not in sim}


@stages.register_stage("report", deps=READS)
def report_stage(ctx: stages.StageContext) -> dict[str, Any]:
  """Writes report.md / report.html: tables and plots of every stage's results."""
  start = time.perf_counter()
  inputs = {name: ctx.input_path(name) for name in READS}
  summary = build_report(ctx.run_dir, inputs, ctx.path)
  seconds = round(time.perf_counter() - start, 2)
  logging.info("report: %s (%d figures) in %.1f s", ctx.run_dir.complete_path("report") /
               REPORT_HTML, len(summary["figures"]), seconds)
  return {**summary, "seconds": seconds}
