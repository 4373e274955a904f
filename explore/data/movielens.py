"""MovieLens ratings and movies, from the published GroupLens layouts.

Two layouts are read:
- CSV (ml-latest-small, ml-20m, ml-25m, ml-32m): `ratings.csv`
  (userId,movieId,rating,timestamp), `movies.csv` (movieId,title,genres with
  genres joined by '|'), optional `tags.csv` (userId,movieId,tag,timestamp);
  UTF-8 with a header, quoted titles, LF or CRLF line endings.
- DAT (ml-1m): `ratings.dat` and `movies.dat`, fields separated by '::', no
  header, Latin-1.

Items are the rated movies (unrated ones are dropped unless
`keep_unrated_items`), indexed by sorted movieId; each has a title and the text
fields "genres" (space-joined, e.g. "Adventure Animation Children") and "tags"
(its distinct tags, most used first, comma-joined). A rating is positive by
`positive_rule` (rating >= 4.0 by default). Bad rows follow `on_bad_rows`, as
in `csv_logs`.

`download=True` fetches the official zip, checks it against the MD5 that
GroupLens publishes beside it, and extracts it atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
import shutil
import tempfile
from typing import Callable, BinaryIO
import urllib.request
import zipfile

from absl import logging
import gin
import pyarrow as pa
import pyarrow.compute as pc

from explore.data import csv_logs, tables
from explore.data.csv_logs import LoadReport, LoadResult
from explore.data.tables import BadInputError, Column, TextFormat
from explore.data.positive import positive_rule

BASE_URL = "https://files.grouplens.org/datasets/movielens"
NO_GENRES = "(no genres listed)"


@dataclasses.dataclass(frozen=True)
class Variant:
  """A published MovieLens release: its archive name, layout and archive checksum."""

  archive: str  # zip name without ".zip"; also its top-level folder
  layout: str  # "csv" or "dat"
  checksum: str  # "<algorithm>:<hex digest>" of the zip


# MD5s are the ones GroupLens publishes as <archive>.zip.md5. ml-latest-small is
# regenerated from time to time; its MD5 is that of the 2018-09-26 release.
VARIANTS = {
    "latest-small": Variant("ml-latest-small", "csv", "md5:31a303aabbc519bd33d025e44d6c2570"),
    "1m": Variant("ml-1m", "dat", "md5:c4d9eecfca2ab87c1945afe126590906"),
    "20m": Variant("ml-20m", "csv", "md5:cd245b17a1ae2cc31bb14903e1204af3"),
    "25m": Variant("ml-25m", "csv", "md5:6b51fb2759a8657d3bfcbfc42b592ada"),
    "32m": Variant("ml-32m", "csv", "md5:d472be332d4daa821edc399621853b57"),
}

_CSV = TextFormat()
_DAT = TextFormat(delimiter="::", encoding="latin-1", quoting=False)
_LAYOUTS = {  # layout -> (ratings file, movies file, tags file or None, text format)
    "csv": ("ratings.csv", "movies.csv", "tags.csv", _CSV),
    "dat": ("ratings.dat", "movies.dat", None, _DAT),
}
_DAT_HEADERS = {
    "ratings.dat": ("userId", "movieId", "rating", "timestamp"),
    "movies.dat": ("movieId", "title", "genres"),
}


class ChecksumError(BadInputError):
  """A downloaded archive does not match its published checksum."""


def _file_format(path: Path, fmt: TextFormat) -> TextFormat:
  header = _DAT_HEADERS.get(path.name)
  return dataclasses.replace(fmt, header=header) if header else fmt


def _check_variant(variant: str) -> None:
  if variant != "auto" and variant not in VARIANTS:
    raise ValueError(f"load_movielens: variant must be 'auto' or one of {sorted(VARIANTS)}, "
                     f"got {variant!r}")


def find_layout(path: str | os.PathLike, variant: str = "auto") -> tuple[Path, str] | None:
  """(folder, layout) of the ratings under `path` or its `ml-*` subfolder, or None."""
  path = Path(path)
  chosen = list(VARIANTS.values()) if variant == "auto" else [VARIANTS[variant]]
  names = [v.archive for v in chosen]
  layouts = list(_LAYOUTS) if variant == "auto" else [VARIANTS[variant].layout]
  for folder in [path] + [path / name for name in names]:
    for layout in layouts:
      if (folder / _LAYOUTS[layout][0]).is_file():
        return folder, layout
  return None


def _digest(algorithm: str) -> "hashlib._Hash":
  if algorithm not in ("md5", "sha256"):
    raise ValueError(f"checksum algorithm must be md5 or sha256, got {algorithm!r}")
  return hashlib.new(algorithm)


def _extract(archive: Path, directory: Path) -> None:
  """Extracts the zip's files into `directory`, dropping its top-level folder.

  Files land by rename from a temporary sibling folder, the ratings file last, so
  the folder never looks loadable before every file is in place.
  """
  staging = Path(tempfile.mkdtemp(dir=directory, prefix=".extract.", suffix=".tmp"))
  try:
    with zipfile.ZipFile(archive) as zf:
      broken = zf.testzip()
      if broken is not None:
        raise ChecksumError(f"{archive}: member {broken!r} fails its CRC check")
      names = [n for n in zf.namelist() if not n.endswith("/")]
      for name in names:
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts:
          raise BadInputError(f"{archive}: unsafe member path {name!r}")
      strip = (len({Path(n).parts[0] for n in names}) == 1
               and all(len(Path(n).parts) > 1 for n in names))  # one top folder: drop it
      targets = []
      for name in names:
        relative = Path(*Path(name).parts[1:]) if strip else Path(name)
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        with zf.open(name) as src, open(staging / relative, "wb") as dst:
          shutil.copyfileobj(src, dst, 1 << 20)
        targets.append(relative)
    targets.sort(key=lambda r: r.name.startswith("ratings."))
    for relative in targets:
      (directory / relative).parent.mkdir(parents=True, exist_ok=True)
      os.replace(staging / relative, directory / relative)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


@gin.configurable
def download_movielens(
    variant: str,
    directory: str | os.PathLike,
    base_url: str = BASE_URL,
    checksum: str | None = None,
    opener: Callable[[str], BinaryIO] = urllib.request.urlopen,
) -> Path:
  """Downloads `<base_url>/<archive>.zip`, verifies it and extracts it into `directory`.

  Args:
    variant: a key of `VARIANTS` ("latest-small", "1m", "20m", "25m", "32m").
    directory: where the data files land (the archive's top folder is dropped).
    base_url: a mirror, or a file:// URL.
    checksum: "md5:<hex>" or "sha256:<hex>"; defaults to the published MD5.
    opener: opens a URL for reading (urllib by default).

  Returns:
    `directory`. The zip is written to a temporary file and deleted afterwards;
    on a checksum mismatch it is deleted and ChecksumError is raised.
  """
  if variant not in VARIANTS:
    raise ValueError(f"download_movielens: variant must be one of {sorted(VARIANTS)}, "
                     f"got {variant!r}")
  info = VARIANTS[variant]
  algorithm, _, expected = (checksum or info.checksum).partition(":")
  digest = _digest(algorithm)
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  url = f"{base_url.rstrip('/')}/{info.archive}.zip"
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{info.archive}.", suffix=".zip.part")
  try:
    logging.info("Downloading %s into %s", url, directory)
    with os.fdopen(fd, "wb") as out, opener(url) as response:
      while chunk := response.read(1 << 20):
        digest.update(chunk)
        out.write(chunk)
    if digest.hexdigest() != expected.lower():
      raise ChecksumError(f"{url}: {algorithm} is {digest.hexdigest()}, expected {expected}; "
                          "the download was deleted")
    _extract(Path(tmp), directory)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return directory


def _genres_text(genres: pa.Array) -> pa.Array:
  """'Adventure|Animation|Children' -> 'Adventure Animation Children'; no genres -> ''."""
  genres = pc.if_else(pc.equal(genres, NO_GENRES), "", genres)
  return pc.replace_substring(genres, "|", " ")


def _tags_text(movie: pa.Array, tag: pa.Array, max_tags: int) -> tuple[pa.Array, pa.Array]:
  """(movie ids, their tags text): distinct tags (case-insensitive), most used first."""
  tag = pc.utf8_trim_whitespace(tag)
  table = pa.table({"movie": movie, "key": pc.utf8_lower(tag), "tag": tag}).filter(
      pc.not_equal(tag, ""))
  counted = table.group_by(["movie", "key"], use_threads=False).aggregate(
      [("tag", "first"), ("tag", "count")])
  counted = counted.sort_by([("movie", "ascending"), ("tag_count", "descending"),
                             ("key", "ascending")])
  listed = counted.group_by("movie", use_threads=False).aggregate([("tag_first", "list")])
  tags = pc.list_slice(listed.column("tag_first_list").combine_chunks(), 0, max_tags)
  return listed.column("movie").combine_chunks(), pc.binary_join(tags, ", ")


@gin.configurable
def load_movielens(
    path: str | os.PathLike,
    variant: str = "auto",
    download: bool = False,
    with_tags: bool = True,
    max_tags_per_item: int = 20,
    keep_unrated_items: bool = False,
    on_bad_rows: str = "error",
) -> LoadResult:
  """Loads a MovieLens folder as (Interactions, ItemCatalog) plus a LoadReport.

  Args:
    path: the folder holding ratings/movies files, or its parent (e.g. the folder
      that holds `ml-25m/`).
    variant: "auto" (detect the layout) or a key of `VARIANTS`.
    download: fetch and verify the archive into `path` when no data is there
      (needs an explicit variant).
    with_tags: read `tags.csv` where present into the "tags" text field.
    max_tags_per_item: keep at most this many distinct tags per movie.
    keep_unrated_items: keep movies nobody rated in the catalog and item index.
    on_bad_rows: 'error' or 'skip' (see `csv_logs`).
  """
  _check_variant(variant)
  tables.check_on_bad_rows(on_bad_rows)
  found = find_layout(path, variant)
  if found is None and download:
    if variant == "auto":
      raise ValueError(f"load_movielens: {path} holds no MovieLens data; set variant (one of "
                       f"{sorted(VARIANTS)}) to download it")
    download_movielens(variant, path)
    found = find_layout(path, variant)
  if found is None:
    raise tables.MissingFileError(
        f"{path}: no ratings.csv or ratings.dat here or in an ml-* subfolder; pass the MovieLens "
        "folder, or download=True with a variant")
  folder, layout = found
  ratings_name, movies_name, tags_name, fmt = _LAYOUTS[layout]
  report = LoadReport(source=str(folder))
  read = lambda name, columns: tables.read_table(  # noqa: E731
      folder / name, columns, _file_format(folder / name, fmt), on_bad_rows=on_bad_rows,
      report=report)

  movie_id = Column("movieId", "movie id", "int_id")
  movies = read(movies_name, [movie_id, Column("title", "title", "text"),
                              Column("genres", "genres", "text")])
  tables.check_unique(movies, movie_id)
  ids = movies.columns["movieId"]
  text = {"genres": _genres_text(movies.columns["genres"])}
  if with_tags and tags_name and (folder / tags_name).is_file():
    tags = read(tags_name, [movie_id, Column("tag", "tag", "text")])
    tags = tables.drop_unknown_items(tags, "movieId", ids, folder / movies_name, on_bad_rows,
                                     report)
    tagged, tags_text = _tags_text(tags.columns["movieId"], tags.columns["tag"], max_tags_per_item)
    text["tags"] = pc.fill_null(tags_text.take(pc.index_in(ids, value_set=tagged)), "")
  else:
    text["tags"] = pa.array([""] * len(ids), pa.string())

  ratings = read(ratings_name, [Column("userId", "user id", "int_id"), movie_id,
                                Column("rating", "rating", "float"),
                                Column("timestamp", "timestamp", "time")])
  report.rows_read = ratings.num_records
  ratings = tables.drop_unknown_items(ratings, "movieId", ids, folder / movies_name,
                                      on_bad_rows, report)
  rating = ratings.columns["rating"].to_numpy()
  interactions, catalog = csv_logs.build_dataset(
      ratings.columns["userId"], ratings.columns["movieId"], ratings.columns["timestamp"],
      rating, positive_rule(rating), catalog_ids=ids,
      title=pc.utf8_trim_whitespace(movies.columns["title"]), text=text,
      keep_unrated_items=keep_unrated_items, report=report)
  logging.info("MovieLens %s: %d users, %d items, %d ratings (%d unrated movies dropped)",
               folder, interactions.num_users, interactions.num_items, len(interactions),
               report.unrated_items_dropped)
  return LoadResult(interactions, catalog, report)
