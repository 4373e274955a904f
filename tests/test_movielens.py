"""The MovieLens loader: the real latest-small release, the 1M layout, bad input, download."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import zipfile

import gin
import numpy as np
import pytest

from explore.data import movielens
from explore.data.tables import (BadRowError, DuplicateIdError, EmptyFileError,
                                 MissingColumnError, MissingFileError)
from explore.data.movielens import ChecksumError, download_movielens, load_movielens
from explore.data.schema import Interactions, ItemCatalog


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture(scope="module")
def small():
  from conftest import MOVIELENS_SMALL
  if not (MOVIELENS_SMALL / "ratings.csv").exists():
    pytest.skip(f"MovieLens latest-small not found at {MOVIELENS_SMALL}")
  return load_movielens(MOVIELENS_SMALL)


def _csv_rows(path):
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def _index(ids, original):
  return int(np.flatnonzero(ids == original)[0])


# The real ml-latest-small release.

def test_latest_small_sizes(small):
  assert small.interactions.num_users == 610
  assert small.interactions.num_items == 9724
  assert len(small.interactions) == 100836
  assert small.report.unrated_items_dropped == 9742 - 9724


def test_latest_small_is_sorted_by_user_then_time(small):
  user, timestamp = small.interactions.user, small.interactions.timestamp
  assert (np.diff(user) >= 0).all()
  same_user = user[1:] == user[:-1]
  assert (np.diff(timestamp)[same_user] >= 0).all()


def test_latest_small_rows_match_the_file_with_original_ids(small, movielens_small_dir):
  i = small.interactions
  loaded = sorted(zip(i.user_ids[i.user].tolist(), i.item_ids[i.item].tolist(),
                      i.engagement.tolist(), i.timestamp.tolist()))
  expected = sorted((int(r["userId"]), int(r["movieId"]), float(r["rating"]), int(r["timestamp"]))
                    for r in _csv_rows(movielens_small_dir / "ratings.csv"))
  assert loaded == expected
  assert i.user_ids[0] == 1 and i.user_ids.dtype.kind == "i"


def test_catalog_is_indexed_like_the_interactions(small):
  np.testing.assert_array_equal(small.catalog.item_ids, small.interactions.item_ids)
  assert (np.diff(small.catalog.item_ids) > 0).all()


def test_title_with_a_comma_is_parsed_whole(small):
  catalog = small.catalog
  assert catalog.title[_index(catalog.item_ids, 11)] == "American President, The (1995)"


def test_genres_are_readable_text(small):
  catalog = small.catalog
  assert catalog.text["genres"][_index(catalog.item_ids, 1)] == (
      "Adventure Animation Children Comedy Fantasy")
  assert "|" not in "".join(catalog.text["genres"].tolist())


def test_movies_without_genres_get_empty_genre_text(small, movielens_small_dir):
  no_genres = [int(r["movieId"]) for r in _csv_rows(movielens_small_dir / "movies.csv")
               if r["genres"] == "(no genres listed)"]
  rated = [m for m in no_genres if m in set(small.catalog.item_ids.tolist())]
  assert rated and all(small.catalog.text["genres"][_index(small.catalog.item_ids, m)] == ""
                       for m in rated)


def test_tags_are_aggregated_per_movie(small, movielens_small_dir):
  catalog = small.catalog
  tags = catalog.text["tags"][_index(catalog.item_ids, 60756)].split(", ")
  expected = {r["tag"] for r in _csv_rows(movielens_small_dir / "tags.csv")
              if r["movieId"] == "60756"}
  assert set(tags) == expected and "Highly quotable" in tags
  assert catalog.text["tags"][_index(catalog.item_ids, 2)] != ""


def test_positive_fraction_matches_a_direct_count(small, movielens_small_dir):
  ratings = [float(r["rating"]) for r in _csv_rows(movielens_small_dir / "ratings.csv")]
  assert small.interactions.positive.sum() == sum(r >= 4.0 for r in ratings)


def test_positive_threshold_is_set_in_gin(movielens_small_dir):
  gin.parse_config("positive_rule.threshold = 4.5")
  interactions, _ = load_movielens(movielens_small_dir)
  np.testing.assert_array_equal(interactions.positive, interactions.engagement >= 4.5)


def test_keep_unrated_items_keeps_the_whole_catalog(movielens_small_dir):
  interactions, catalog = load_movielens(movielens_small_dir, keep_unrated_items=True)
  assert interactions.num_items == catalog.num_items == 9742
  assert len(interactions) == 100836


def test_save_load_round_trip(small, tmp_path):
  small.interactions.save(tmp_path / "interactions")
  small.catalog.save(tmp_path / "catalog")
  interactions = Interactions.load(tmp_path / "interactions")
  catalog = ItemCatalog.load(tmp_path / "catalog")
  for column in ("user", "item", "timestamp", "engagement", "positive", "user_ids", "item_ids"):
    np.testing.assert_array_equal(getattr(interactions, column),
                                  getattr(small.interactions, column))
  assert catalog.item_text(0) == small.catalog.item_text(0)
  np.testing.assert_array_equal(catalog.text["tags"], small.catalog.text["tags"])


# Synthetic files in the published layouts.

def _write_csv_release(folder, ratings=None, movies=None, tags=None):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "movies.csv").write_bytes((movies or (
      "movieId,title,genres\r\n"
      "1,Toy Story (1995),Adventure|Animation\r\n"
      "2,\"Shawshank Redemption, The (1994)\",Crime|Drama\r\n"
      "3,Never Rated (2000),(no genres listed)\r\n")).encode())
  (folder / "ratings.csv").write_bytes((ratings or (
      "userId,movieId,rating,timestamp\r\n"
      "5,2,4.5,200\r\n5,1,3.0,100\r\n9,1,4.0,50\r\n")).encode())
  if tags is not None:
    (folder / "tags.csv").write_bytes(tags.encode())
  return folder


def test_tags_are_deduplicated_ignoring_case_most_used_first_and_capped(tmp_path):
  folder = _write_csv_release(tmp_path / "ml", tags=(
      "userId,movieId,tag,timestamp\n5,1,pixar,1\n9,1,funny,2\n7,1,Pixar,3\n"
      "8,1,\"witty, clever\",4\n8,1, ,5\n"))
  _, catalog = load_movielens(folder, max_tags_per_item=2)
  assert catalog.text["tags"].tolist() == ["pixar, funny", ""]


def test_ml_1m_layout_with_double_colon_and_latin1(tmp_path):
  folder = tmp_path / "data" / "ml-1m"
  folder.mkdir(parents=True)
  (folder / "movies.dat").write_bytes(
      "1::Toy Story (1995)::Animation|Children's\n2::Café, Le (1990)::Comedy\n".encode("latin-1"))
  (folder / "ratings.dat").write_bytes(b"1::2::5::978300760\n1::1::3::978300000\n2::1::4::1\n")
  interactions, catalog = load_movielens(tmp_path / "data")  # finds the ml-1m subfolder
  assert catalog.title.tolist() == ["Toy Story (1995)", "Café, Le (1990)"]
  assert catalog.text["genres"][0] == "Animation Children's"
  assert interactions.item_ids[interactions.item].tolist() == [1, 2, 1]
  assert interactions.positive.tolist() == [False, True, True]


def test_ml_1m_bad_row_is_located(tmp_path):
  folder = tmp_path / "ml-1m"
  folder.mkdir()
  (folder / "movies.dat").write_bytes(b"1::A (1995)::Drama\n")
  (folder / "ratings.dat").write_bytes(b"1::1::5::10\n1::1::5\n")
  with pytest.raises(BadRowError,
                     match=r"ratings.dat, line 2: wrong number of fields \('1::1::5'\)"):
    load_movielens(folder)


def test_unknown_movie_in_ratings_is_an_error_or_skipped(tmp_path):
  folder = _write_csv_release(tmp_path / "ml", ratings=(
      "userId,movieId,rating,timestamp\n5,1,4.0,1\n5,99,4.0,2\n"))
  with pytest.raises(BadRowError, match=r"ratings.csv, line 3: unknown item id \(not in "
                     r"movies.csv\) \(99\)"):
    load_movielens(folder)
  result = load_movielens(folder, on_bad_rows="skip")
  assert result.report.skipped == {"ratings.csv: unknown item id (not in movies.csv)": 1}
  assert len(result.interactions) == 1


def test_malformed_rating_rows_are_an_error_or_skipped_and_counted(tmp_path):
  folder = _write_csv_release(tmp_path / "ml", ratings=(
      "userId,movieId,rating,timestamp\n5,1,4.0,1\n5,2,four,2\n6,2,4.0\n6,1,3.5,-1\n7,1,5,3\n"))
  with pytest.raises(BadRowError, match=r"ratings.csv, line 3: non-numeric rating \('four'\)"):
    load_movielens(folder)
  result = load_movielens(folder, on_bad_rows="skip")
  assert result.report.skipped == {"ratings.csv: wrong number of fields": 1,
                                   "ratings.csv: non-numeric rating": 1,
                                   "ratings.csv: negative timestamp": 1}
  assert result.interactions.user_ids.tolist() == [5, 7]
  assert (result.report.rows_read, result.report.rows_kept) == (5, 2)


def test_duplicate_movie_id_is_an_error_naming_it(tmp_path):
  folder = _write_csv_release(tmp_path / "ml", movies=(
      "movieId,title,genres\n1,A (1995),Drama\n2,B (1996),Drama\n1,A again (1995),Drama\n"))
  with pytest.raises(DuplicateIdError, match=r"movies.csv: movie id 1 appears 2 times"):
    load_movielens(folder)


@pytest.mark.parametrize("text", ["", "userId,movieId,rating,timestamp\n"])
def test_empty_ratings_file_is_an_error(tmp_path, text):
  folder = _write_csv_release(tmp_path / "ml")
  (folder / "ratings.csv").write_text(text)
  with pytest.raises(EmptyFileError, match="ratings.csv"):
    load_movielens(folder, on_bad_rows="skip")


def test_missing_column_names_it_and_the_columns_found(tmp_path):
  folder = _write_csv_release(tmp_path / "ml", ratings="userId,itemId,rating,timestamp\n1,1,4,1\n")
  with pytest.raises(MissingColumnError, match=r"ratings.csv: no column 'movieId' .*'itemId'"):
    load_movielens(folder)


def test_folder_without_data_is_an_error(tmp_path):
  with pytest.raises(MissingFileError, match="no ratings.csv or ratings.dat"):
    load_movielens(tmp_path)


def test_unknown_variant_is_rejected(tmp_path):
  with pytest.raises(ValueError, match="variant must be"):
    load_movielens(tmp_path, variant="100k")


# Download (no network here: a local file:// mirror and an injected opener).

def _mirror(tmp_path, archive="ml-latest-small"):
  """A zip laid out like the GroupLens one, in a local mirror folder; returns (url, md5)."""
  mirror = tmp_path / "mirror"
  mirror.mkdir()
  source = _write_csv_release(tmp_path / "source")
  with zipfile.ZipFile(mirror / f"{archive}.zip", "w") as zf:
    for name in ("movies.csv", "ratings.csv"):
      zf.write(source / name, f"{archive}/{name}")
  md5 = hashlib.md5((mirror / f"{archive}.zip").read_bytes()).hexdigest()
  return mirror.as_uri(), md5


def test_download_from_a_mirror_verifies_and_extracts(tmp_path):
  url, md5 = _mirror(tmp_path)
  target = tmp_path / "data"
  download_movielens("latest-small", target, base_url=url, checksum=f"md5:{md5}")
  assert sorted(os.listdir(target)) == ["movies.csv", "ratings.csv"]
  interactions, _ = load_movielens(target)
  assert len(interactions) == 3


def test_load_with_download_fetches_once(tmp_path):
  url, md5 = _mirror(tmp_path)
  gin.parse_config(f"download_movielens.base_url = '{url}'\n"
                   f"download_movielens.checksum = 'md5:{md5}'")
  interactions, catalog = load_movielens(tmp_path / "data", variant="latest-small", download=True)
  assert catalog.title.tolist() == ["Toy Story (1995)", "Shawshank Redemption, The (1994)"]
  (tmp_path / "mirror" / "ml-latest-small.zip").unlink()
  assert len(load_movielens(tmp_path / "data", variant="latest-small", download=True)[0]) == 3


def test_checksum_mismatch_deletes_the_download_and_raises(tmp_path):
  url, _ = _mirror(tmp_path)
  target = tmp_path / "data"
  with pytest.raises(ChecksumError, match="md5 is .*expected 31a303aabbc519bd33d025e44d6c2570"):
    download_movielens("latest-small", target, base_url=url)  # the published MD5
  assert os.listdir(target) == []


def test_download_uses_an_injected_opener_and_sha256(tmp_path):
  payload = io.BytesIO()
  with zipfile.ZipFile(payload, "w") as zf:
    zf.writestr("ml-1m/movies.dat", "1::A (1995)::Drama\n")
    zf.writestr("ml-1m/ratings.dat", "1::1::5::10\n")
  data = payload.getvalue()
  urls = []

  def opener(url):
    urls.append(url)
    return io.BytesIO(data)

  download_movielens("1m", tmp_path, checksum="sha256:" + hashlib.sha256(data).hexdigest(),
                     opener=opener)
  assert urls == [f"{movielens.BASE_URL}/ml-1m.zip"]
  assert len(load_movielens(tmp_path, variant="1m")[0]) == 1


def test_download_needs_an_explicit_variant(tmp_path):
  with pytest.raises(ValueError, match="set variant"):
    load_movielens(tmp_path, download=True)


def test_every_known_variant_has_a_checksum():
  for name, variant in movielens.VARIANTS.items():
    algorithm, _, digest = variant.checksum.partition(":")
    assert algorithm == "md5" and len(digest) == 32, name
