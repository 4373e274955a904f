"""The `report` stage on the tiny run: both files and every figure, its numbers, the HTML in Chromium."""

import json
import re

import pytest

from explore import artifacts
from explore import rundir
from explore import stages
from explore.report import stage as report_stage
import headless_chromium
from pipeline_fixtures import copy_run, parse_tiny, tiny_pipeline


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
  return tiny_pipeline(tmp_path_factory)


def _report(run_dir):
  folder = rundir.RunDir(run_dir).complete_path("report")
  return folder, (folder / report_stage.REPORT_MD).read_text()


def test_report_writes_markdown_html_and_every_figure(pipeline):
  folder, markdown = _report(pipeline)
  html = (folder / report_stage.REPORT_HTML).read_text()
  figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
  assert set(figures) == {"llm_hit5.png", "transitions_heatmap.png", "sim_round_ueuc.png",
                          "sim_round_discoveries.png", "sim_round_satisfaction.png",
                          "sim_bars_ueuc.png", "sim_bars_discoveries.png", "sim_bars_clicks.png",
                          "sim_bars_satisfaction.png"}
  for name in figures:
    assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
  assert html.count('<img src="data:image/png;base64,') == len(figures)
  assert "http://" not in html and "https://" not in html  # self-contained
  manifest = rundir.RunDir(pipeline).manifest("report")
  assert manifest.summary["figures"] == figures and manifest.summary["simulated"]


def _rows(markdown, heading):
  """{first cell: table line} of the tables in the section under `## heading`."""
  section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
  return {line.split(" | ")[0].strip("| "): line for line in section.splitlines()
          if line.startswith("| ")}


def test_report_numbers_are_the_runs_metrics(pipeline):
  run_dir = rundir.RunDir(pipeline)
  _, markdown = _report(pipeline)
  fmt = report_stage.fmt
  sim = json.loads((run_dir.complete_path("sim") / "metrics.json").read_text())
  lines = _rows(markdown, "Closed-loop simulator")
  assert "llm" in sim["policies"] and "llm" in lines
  for name, row in sim["policies"].items():
    line = lines[name]
    for key in ("ueuc", "discoveries", "clicks", "satisfaction"):
      assert report_stage.fmt_interval(row[key]) in line, (name, key)
      diff = sim["differences"][name][key]
      assert f"{diff['mean']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]" in line
  llm = json.loads((run_dir.complete_path("llm") / "metrics.json").read_text())
  lines = _rows(markdown, "Offline: the LLM planner and the count planners")
  assert set(llm["planners"]) <= set(lines)
  for name, row in llm["planners"].items():
    cells = lines[name].strip("| ").split(" | ")
    assert cells[1:5] == [fmt(row["all"][k]) for k in ("hit@1", "hit@5", "hit@10")] + [
        fmt(row["unseen"]["hit@5"])], name
  seqrec = json.loads((run_dir.complete_path("seqrec") / "metrics.json").read_text())
  model = [l for l in markdown.splitlines() if l.startswith("| sequence recommender | test |")]
  popular = [l for l in markdown.splitlines() if l.startswith("| most popular | test |")]
  assert model[0].endswith(f"| {fmt(seqrec['model']['test']['hr@10'])} | "
                           f"{fmt(seqrec['model']['test']['ndcg@10'])} |")
  assert popular[0].endswith(f"| {fmt(seqrec['most_popular']['test']['hr@10'])} | "
                             f"{fmt(seqrec['most_popular']['test']['ndcg@10'])} |")
  sim_manifest = run_dir.manifest("sim")
  assert f"| sim | {sim_manifest.finished - sim_manifest.started:.1f} |" in markdown


def test_report_html_renders_in_headless_chromium(pipeline, tmp_path):
  binary = headless_chromium.require_chromium()
  folder, _ = _report(pipeline)
  html = (folder / report_stage.REPORT_HTML).read_text()
  # The report has no script; the test adds one that records, after load, how many images
  # decoded (naturalWidth > 0), where --dump-dom shows it.
  probe = ("<script>window.addEventListener('load', () => {const imgs = [...document.images];"
           "document.body.dataset.images = imgs.length + ':' + imgs.filter("
           "i => i.complete && i.naturalWidth > 0).length;});</script>")
  page = tmp_path / "report.html"
  page.write_text(html.replace("</body>", probe + "</body>"))
  dom, problems = headless_chromium.render(page.as_uri(), binary=binary)
  assert not problems, problems
  images = re.search(r'data-images="(\d+):(\d+)"', dom)
  assert images, dom[:500]
  assert int(images.group(1)) == 9 and images.group(2) == images.group(1)
  assert "<h1>explore run report</h1>" in dom and "Closed-loop simulator" in dom


def test_report_names_the_stage_whose_artifacts_are_missing(pipeline, tmp_path, clean_gin):
  run_dir = copy_run(pipeline, tmp_path / "run")
  inputs = {name: run_dir.complete_path(name) for name in report_stage.READS}
  (run_dir.complete_path("llm") / "metrics.json").unlink()
  with pytest.raises(report_stage.ReportError, match=r"'llm' stage.*run `explore llm`"):
    report_stage.build_report(run_dir, inputs, tmp_path / "out")
  del inputs["precompute"]
  with pytest.raises(report_stage.ReportError, match=r"'precompute' stage.*explore precompute"):
    report_stage.build_report(run_dir, inputs, tmp_path / "out")
  # Through the stages: the manifest check names the stage before the report reads it.
  parse_tiny(run_dir.root)
  with pytest.raises(artifacts.CorruptArtifactError, match=r"stage 'llm' is corrupt.*explore llm"):
    stages.run_stages(["report"], run_dir, seed=0, force=True)


def test_report_without_a_world_says_the_simulator_needs_one(pipeline, tmp_path):
  run_dir = copy_run(pipeline, tmp_path / "run")
  skipped = {"skipped": "no synthetic world"}
  artifacts.atomic_write_json(run_dir.complete_path("sim") / "metrics.json", skipped)
  inputs = {name: run_dir.complete_path(name) for name in report_stage.READS}
  summary = report_stage.build_report(run_dir, inputs, tmp_path / "out")
  markdown = (tmp_path / "out" / report_stage.REPORT_MD).read_text()
  assert report_stage.NO_WORLD in markdown and not summary["simulated"]
  assert "| llm |" in markdown and "HR@10" in markdown  # the offline parts are there
  assert summary["figures"] == ["llm_hit5.png", "transitions_heatmap.png"]
