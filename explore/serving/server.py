"""`explore serve`: the recommend API over HTTP (Starlette on uvicorn) and a small page.

  GET  /healthz                         {"status": "ok", users, items, clusters, k, table}
  GET  /api/recommend?user=ID           one logged user's slate (see `response.py`)
  GET  /api/recommend?items=1,2,3       an explicit history's slate
  POST /api/recommend                   {"user": ID} or {"items": [...]}
  POST /api/recommend_batch             {"users": [...]} or {"histories": [[...], ...]}
                                        -> {"results": [slate, ...]}
  GET  /api/users?limit=N               the first N user ids of the log (for the page)
  GET  /                                the page (static/index.html + static/app.js)
Every recommend call takes optional n_explore / n_regular. Bad input answers
HTTP 400 (404 for an unknown user or item id) with {"error": reason}; the
server keeps serving.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
import socket
import threading
from typing import Any

from explore.serving.histories import ServingError, UnknownIdError

STATIC = Path(__file__).parent / "static"
MAX_BATCH_ROWS = 10_000


class PortInUseError(ServingError):
  """The port to serve on is taken."""


def _sizes(source) -> dict[str, int]:
  sizes = {}
  for name in ("n_explore", "n_regular"):
    value = source.get(name)
    if value is not None:
      try:
        sizes[name] = int(value)
      except (TypeError, ValueError):
        raise ServingError(f"{name}={value!r} must be an integer") from None
  return sizes


def _one(explorer, request: dict[str, Any]) -> dict[str, Any]:
  """A slate for {"user": ID} or {"items": [...]} (plus optional sizes)."""
  sizes = _sizes(request)
  if ("user" in request) == ("items" in request):
    raise ServingError('give exactly one of "user" (a user id) or "items" (a list of item ids)')
  if "user" in request:
    return explorer.recommend_user(request["user"], **sizes)
  items = request["items"]
  if not isinstance(items, list):
    raise ServingError(f'"items" must be a list of item ids, got {type(items).__name__}')
  return explorer.recommend(items, **sizes)


def _batch(explorer, request: dict[str, Any]) -> dict[str, Any]:
  sizes = _sizes(request)
  if ("users" in request) == ("histories" in request):
    raise ServingError('give exactly one of "users" (user ids) or "histories" (lists of items)')
  rows = request.get("users", request.get("histories"))
  if not isinstance(rows, list) or len(rows) > MAX_BATCH_ROWS:
    raise ServingError(f"a batch must be a list of at most {MAX_BATCH_ROWS} entries")
  if "histories" in request and not all(isinstance(h, list) for h in rows):
    raise ServingError('"histories" must be a list of lists of item ids')
  call = explorer.recommend_users if "users" in request else explorer.recommend_batch
  batch = call(rows, **sizes)
  return {"results": [explorer.describe(batch, row) for row in range(len(batch))]}


def build_app(explorer):
  """The Starlette application over a loaded `Explorer`."""
  from starlette.applications import Starlette  # pylint: disable=g-import-not-at-top
  from starlette.concurrency import run_in_threadpool  # pylint: disable=g-import-not-at-top
  from starlette.responses import FileResponse, JSONResponse  # pylint: disable=g-import-not-at-top
  from starlette.routing import Mount, Route  # pylint: disable=g-import-not-at-top
  from starlette.staticfiles import StaticFiles  # pylint: disable=g-import-not-at-top

  async def answer(fn, *args) -> JSONResponse:
    try:
      return JSONResponse(await run_in_threadpool(fn, explorer, *args))
    except UnknownIdError as e:
      return JSONResponse({"error": str(e)}, status_code=404)
    except ValueError as e:  # ServingError, TableError, RetrievalInputError, ...
      return JSONResponse({"error": str(e)}, status_code=400)

  async def body(request) -> dict[str, Any]:
    raw = await request.body()
    try:
      data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ServingError(f"malformed JSON body: {e}") from None
    if not isinstance(data, dict):
      raise ServingError(f"the JSON body must be an object, got {type(data).__name__}")
    return data

  async def recommend(request):
    if request.method == "GET":
      query = dict(request.query_params)
      if "items" in query:
        query["items"] = [i for i in query["items"].split(",") if i.strip()]
      return await answer(_one, query)
    try:
      data = await body(request)
    except ServingError as e:
      return JSONResponse({"error": str(e)}, status_code=400)
    return await answer(_one, data)

  async def recommend_batch(request):
    try:
      data = await body(request)
    except ServingError as e:
      return JSONResponse({"error": str(e)}, status_code=400)
    return await answer(_batch, data)

  async def users(request):
    try:
      limit = min(max(int(request.query_params.get("limit", 20)), 0), 1000)
    except ValueError:
      return JSONResponse({"error": "limit must be an integer"}, status_code=400)
    return JSONResponse({"users": explorer.users.original(range(min(limit,
                                                                    len(explorer.users))))})

  async def healthz(request):
    del request
    return JSONResponse({"status": "ok", "users": len(explorer.users),
                         "items": len(explorer.items), "clusters": explorer.num_clusters,
                         "k": explorer.k, "table": str(explorer.inputs.table_path)})

  async def index(request):
    del request
    return FileResponse(STATIC / "index.html")

  return Starlette(routes=[
      Route("/", index), Route("/healthz", healthz), Route("/api/users", users),
      Route("/api/recommend", recommend, methods=["GET", "POST"]),
      Route("/api/recommend_batch", recommend_batch, methods=["POST"]),
      Mount("/static", app=StaticFiles(directory=STATIC), name="static")])


def bind(host: str, port: int) -> socket.socket:
  """A listening socket on host:port; PortInUseError when it is taken."""
  sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
  try:
    sock.bind((host, port))
  except OSError as e:
    sock.close()
    raise PortInUseError(f"cannot listen on {host}:{port}: {e.strerror or e} (is another "
                         "server using the port? pick another with --port)") from None
  sock.listen(128)
  return sock


def _server(explorer, log_level: str):
  import uvicorn  # pylint: disable=g-import-not-at-top
  config = uvicorn.Config(build_app(explorer), log_level=log_level, access_log=False)
  return uvicorn.Server(config)


def serve(explorer, sock: socket.socket, log_level: str = "info") -> None:
  """Serves on a bound socket (`bind`) until interrupted."""
  host, port = sock.getsockname()[:2]
  print(f"explore: serving on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
  _server(explorer, log_level).run(sockets=[sock])


@dataclasses.dataclass
class RunningServer:
  server: Any
  thread: threading.Thread
  port: int

  def stop(self) -> None:
    self.server.should_exit = True
    self.thread.join(timeout=10)


def start_in_thread(explorer, host: str = "127.0.0.1", port: int = 0,
                    log_level: str = "warning") -> RunningServer:
  """A server in a background thread (tests, benchmarks); port 0 picks a free port."""
  sock = bind(host, port)
  server = _server(explorer, log_level)
  server.install_signal_handlers = lambda: None  # not the main thread
  thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
  thread.start()
  for _ in range(500):
    if server.started:
      break
    thread.join(timeout=0.01)
  if not server.started:
    raise ServingError("the HTTP server did not start within 5 s")
  return RunningServer(server, thread, sock.getsockname()[1])
