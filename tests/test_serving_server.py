"""`explore serve` and `explore recommend`: the HTTP API, its errors, the CLI, the page in Chromium."""

import html as html_lib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import urllib.request

import pytest

from explore.serving import Explorer
from explore.serving import server
import headless_chromium
from serving_fixtures import serving_run

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SCREENSHOT = os.environ.get("EXPLORE_SCREENSHOT")  # where to keep the page's screenshot


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return serving_run(tmp_path_factory)


@pytest.fixture(scope="module")
def explorer(run):
  return Explorer.load(run[0], run[1])


@pytest.fixture(scope="module")
def client(explorer):
  from starlette.testclient import TestClient  # pylint: disable=g-import-not-at-top
  return TestClient(server.build_app(explorer))


def test_health_and_one_user_by_get_and_post(client, explorer):
  health = client.get("/healthz").json()
  assert health["status"] == "ok" and health["clusters"] == 16 and health["k"] == 2
  user = explorer.users.ids[2].item()
  by_get = client.get(f"/api/recommend?user={user}&n_explore=2&n_regular=4")
  assert by_get.status_code == 200
  assert by_get.json() == explorer.recommend_user(user, n_explore=2, n_regular=4)
  by_post = client.post("/api/recommend", json={"user": user, "n_explore": 2, "n_regular": 4})
  assert by_post.json() == by_get.json()
  items = explorer.user_history(user)[:5]
  history = client.get("/api/recommend", params={"items": ",".join(map(str, items))})
  assert history.status_code == 200 and history.json() == explorer.recommend(items)


def test_batch_of_users_and_of_histories(client, explorer):
  users = [u.item() for u in explorer.users.ids[:4]]
  results = client.post("/api/recommend_batch", json={"users": users}).json()["results"]
  assert [r["user"] for r in results] == users
  histories = [explorer.user_history(u)[:3] for u in users]
  results = client.post("/api/recommend_batch", json={"histories": histories}).json()["results"]
  assert results[1] == explorer.recommend(histories[1])


@pytest.mark.parametrize("method,path,payload,status,reason", [
    ("get", "/api/recommend?user=987654", None, 404, "unknown user id 987654"),
    ("get", "/api/recommend?items=1,99999", None, 404, "unknown item id 99999"),
    ("get", "/api/recommend?items=", None, 400, "history 0 is empty"),
    ("get", "/api/recommend", None, 400, 'exactly one of "user"'),
    ("get", "/api/recommend?user=1&n_explore=abc", None, 400, "n_explore='abc'"),
    ("post", "/api/recommend", b'{"user": 1', 400, "malformed JSON body"),
    ("post", "/api/recommend", b"[1, 2]", 400, "must be an object"),
    ("post", "/api/recommend", b'{"items": 5}', 400, '"items" must be a list'),
    ("post", "/api/recommend_batch", b'{"histories": [[1], 2]}', 400, "lists of item ids"),
    ("post", "/api/recommend_batch", b"\xff\xfe", 400, "malformed JSON body"),
])
def test_bad_requests_answer_the_reason_and_the_server_keeps_serving(
    client, method, path, payload, status, reason):
  response = client.get(path) if method == "get" else client.post(path, content=payload)
  assert response.status_code == status
  assert reason in response.json()["error"]
  assert client.get("/healthz").status_code == 200


def test_port_in_use_is_one_clear_error(run):
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    with pytest.raises(server.PortInUseError, match=f"127.0.0.1:{port}"):
      server.bind("127.0.0.1", port)
    result = explore_cli("serve", f"--run_dir={run[0]}", f"--table={run[1]}", f"--port={port}")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(
      f"explore: error: cannot listen on 127.0.0.1:{port}")


def explore_cli(*args, timeout=300):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "explore.main", *args], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_recommend_command_prints_the_slate_or_json_and_names_bad_ids(run, explorer):
  user = explorer.users.ids[5].item()
  result = explore_cli("recommend", f"--run_dir={run[0]}", f"--table={run[1]}", f"--user={user}",
                       "--json")
  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout) == explorer.recommend_user(user)
  result = explore_cli("recommend", f"--run_dir={run[0]}", f"--table={run[1]}",
                       "--items=1,2,3", "--n_explore=2", "--n_regular=2")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0].startswith("history: 3 items; recent clusters: #")
  assert sum(" explore " in line for line in lines) == 2
  result = explore_cli("recommend", f"--run_dir={run[0]}", f"--table={run[1]}", "--user=99999")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      "explore: error: unknown user id 99999: not in the run's users (120 known)")


@pytest.fixture(scope="module")
def page(explorer):
  """render(query, screenshot=None) -> (DOM, console problems) of the page in headless Chromium."""
  binary = headless_chromium.require_chromium()
  running = server.start_in_thread(explorer)

  def render(query: str, screenshot=None):
    return headless_chromium.render(f"http://127.0.0.1:{running.port}/?{query}", screenshot,
                                    binary)

  yield render
  running.stop()


def test_page_renders_the_plan_and_slates_in_headless_chromium(page, explorer, tmp_path):
  user = explorer.users.ids[7].item()
  shot = tmp_path / "page.png"
  html, problems = page(f"user={user}", screenshot=shot)
  assert not problems, problems  # every request succeeded, nothing logged to the console
  expected = explorer.recommend_user(user)
  assert f"user {user}: {expected['history']['items']} items" in html
  assert html.count('<li class="explore">') == 3 and html.count('<li class="regular">') == 7
  for cluster in expected["history"]["recent_clusters"] + expected["clusters"]:
    # the page's text nodes are HTML-escaped ('<a1>' in a semantic-ID description is '&lt;a1&gt;')
    assert html_lib.escape(f"#{cluster['cluster']} {cluster['description']}", quote=False) in html
  assert "error:" not in html
  assert shot.exists() and shot.stat().st_size > 10_000
  if SCREENSHOT:
    shutil.copy(shot, SCREENSHOT)


def test_page_shows_a_failed_request_and_chromium_logs_it(page):
  html, problems = page("user=987654")
  assert "error: unknown user id 987654" in html
  assert any("HTTP 404" in line for line in problems), problems  # the check above can fail
