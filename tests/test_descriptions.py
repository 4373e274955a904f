"""Cluster descriptions: readable keywords, distinct and prefix-free, saved and loaded."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from explore.clusters.descriptions import ClusterDescriptions
from explore.clusters.descriptions import DescriptionError
from explore.clusters.descriptions import describe_clusters
from explore.clusters.descriptions import tokenize
from explore.data.schema import ItemCatalog


def make_catalog(titles: list[str], tags: list[str] | None = None) -> ItemCatalog:
  text = {} if tags is None else {"tags": np.asarray(tags)}
  return ItemCatalog(item_ids=np.arange(len(titles)), title=np.asarray(titles), text=text)


OUTDOOR_AND_KITCHEN = make_catalog(
    ["Hiking Trails of the Alps (1995)", "Hiking with Kids", "Camping and Hiking Trails",
     "Pasta Recipes", "Baking Bread Recipes", "Quick Pasta"],
    ["hiking trails", "hiking trails", "camping tents", "cooking pasta", "cooking baking",
     "cooking pasta"])


def descriptions_from(keywords: list[list[str]]) -> ClusterDescriptions:
  return ClusterDescriptions(texts=np.asarray([", ".join(k) for k in keywords]),
                             keywords=tuple(tuple(k) for k in keywords),
                             cluster_sizes=np.ones(len(keywords), np.int64))


def test_tokenize_drops_stop_words_numbers_years_and_short_tokens():
  assert tokenize("The Hiking of Trails (1995) 2001 in Sci-Fi, Children's ok") == [
      "hiking", "trails", "sci-fi", "children"]


def test_dominant_words_of_each_cluster_are_its_keywords():
  d = describe_clusters(OUTDOOR_AND_KITCHEN, np.array([0, 0, 0, 1, 1, 1]), 2, num_keywords=2)
  assert d.keywords[0] == ("hiking", "trails")
  assert d.keywords[1] == ("pasta", "cooking")
  assert d.texts[0] == "hiking, trails"


def test_years_and_stop_words_never_become_keywords():
  d = describe_clusters(OUTDOOR_AND_KITCHEN, np.array([0, 0, 0, 1, 1, 1]), 2, num_keywords=8)
  words = {w for k in d.keywords for w in k}
  assert not words & {"the", "of", "with", "and", "1995"}


def test_popularity_weights_favour_words_of_popular_items():
  catalog = make_catalog(["alpha beta", "alpha gamma", "alpha gamma"])
  item_to_cluster = np.array([0, 0, 0])
  unweighted = describe_clusters(catalog, item_to_cluster, 1, num_keywords=2)
  weighted = describe_clusters(catalog, item_to_cluster, 1, num_keywords=2,
                               weights=np.array([10.0, 1.0, 1.0]))
  assert unweighted.keywords[0] == ("alpha", "gamma")
  assert weighted.keywords[0] == ("alpha", "beta")


def test_field_weights_can_leave_a_field_out():
  d = describe_clusters(OUTDOOR_AND_KITCHEN, np.array([0, 0, 0, 1, 1, 1]), 2, num_keywords=2,
                        field_weights={"tags": 0.0})
  assert d.keywords[1] == ("pasta", "recipes")  # "cooking" is only a tag


def test_equal_descriptions_are_extended_with_their_next_keyword():
  # "music" and "rock" are in every item; "guitar" and "piano" in a third of a cluster.
  catalog = make_catalog(["rock music", "rock music", "rock music guitar",
                          "rock music", "rock music", "rock music piano"])
  d = describe_clusters(catalog, np.array([0, 0, 0, 1, 1, 1]), 2, num_keywords=2)
  assert d.keywords == (("music", "rock", "guitar"), ("music", "rock", "piano"))


def test_only_the_description_that_is_a_prefix_is_extended():
  # Cluster 1's items only say "rock", a prefix of cluster 0's "rock, music".
  catalog = make_catalog(["rock music", "rock", "rock", "rock", "rock"])
  d = describe_clusters(catalog, np.array([0, 0, 0, 1, 1]), 2, num_keywords=2)
  assert [str(t) for t in d.texts] == ["rock, music", "rock, cluster 1"]


def test_collision_without_more_keywords_gets_a_disambiguating_id():
  catalog = make_catalog(["jazz", "jazz", "jazz"])
  d = describe_clusters(catalog, np.array([0, 1, 2]), 3, num_keywords=2)
  assert [str(t) for t in d.texts] == ["jazz, cluster 0", "jazz, cluster 1", "jazz, cluster 2"]


def test_character_prefix_is_resolved():
  catalog = make_catalog(["war war", "warfare", "warfare"])
  d = describe_clusters(catalog, np.array([0, 1, 1]), 2, num_keywords=1, max_extra_keywords=0)
  assert [str(t) for t in d.texts] == ["war, cluster 0", "warfare"]


def test_descriptions_are_distinct_and_prefix_free_on_many_overlapping_clusters():
  rng = np.random.default_rng(0)
  vocabulary = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
  titles = [" ".join(rng.choice(vocabulary, 3)) for _ in range(300)]
  d = describe_clusters(make_catalog(titles), rng.integers(0, 40, 300), 40)
  assert len(set(d.texts.tolist())) == 40
  texts = d.texts.tolist()
  assert not any(a != b and b.startswith(a) for a in texts for b in texts)
  assert not any(a.split(", ") == b.split(", ")[:len(a.split(", "))]
                 for i, a in enumerate(texts) for j, b in enumerate(texts) if i != j)


def test_empty_cluster_gets_a_labelled_description():
  d = describe_clusters(OUTDOOR_AND_KITCHEN, np.array([0, 0, 0, 2, 2, 2]), 3)
  assert d.texts[1] == "empty cluster 1"
  assert d.cluster_sizes.tolist() == [3, 0, 3]


def test_check_prefix_free_names_the_colliding_clusters():
  with pytest.raises(DescriptionError, match=r"cluster 1 .*'drama'.* prefix .*cluster 0"):
    descriptions_from([["drama", "war"], ["drama"]]).check_prefix_free()


def test_check_prefix_free_rejects_duplicates():
  with pytest.raises(DescriptionError, match="equals"):
    descriptions_from([["drama"], ["comedy"], ["drama"]]).check_prefix_free()


def test_save_load_round_trip(tmp_path):
  d = describe_clusters(OUTDOOR_AND_KITCHEN, np.array([0, 0, 0, 1, 1, 2]), 4)
  d.save(tmp_path / "descriptions")
  loaded = ClusterDescriptions.load(tmp_path / "descriptions")
  assert loaded.texts.tolist() == d.texts.tolist()
  assert loaded.keywords == d.keywords
  np.testing.assert_array_equal(loaded.cluster_sizes, d.cluster_sizes)


def test_item_to_cluster_length_must_match_catalog():
  with pytest.raises(DescriptionError, match="item_to_cluster has shape .*6 items"):
    describe_clusters(OUTDOOR_AND_KITCHEN, np.array([0, 0, 1]), 2)


def test_cluster_ids_out_of_range_are_rejected():
  with pytest.raises(DescriptionError, match=r"item_to_cluster\[5\] = 7 is outside \[0, 2\)"):
    describe_clusters(OUTDOOR_AND_KITCHEN, np.array([0, 0, 0, 1, 1, 7]), 2)


def test_num_keywords_below_one_is_rejected():
  with pytest.raises(DescriptionError, match="num_keywords must be >= 1"):
    describe_clusters(OUTDOOR_AND_KITCHEN, np.zeros(6, np.int32), 1, num_keywords=0)


def test_unknown_field_weight_is_rejected():
  with pytest.raises(DescriptionError, match="field_weights names \\['genre'\\]"):
    describe_clusters(OUTDOOR_AND_KITCHEN, np.zeros(6, np.int32), 1, field_weights={"genre": 2.0})


def test_movielens_first_genre_clusters_are_described_by_their_genre(movielens_small_dir):
  with open(movielens_small_dir / "movies.csv", newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  genres = np.asarray([r["genres"].replace("|", " ") for r in rows])
  catalog = ItemCatalog(item_ids=np.asarray([int(r["movieId"]) for r in rows]),
                        title=np.asarray([r["title"] for r in rows]), text={"genres": genres})
  first_genre = [g.split()[0].lower() for g in genres]
  names = sorted(set(first_genre))
  item_to_cluster = np.asarray([names.index(g) for g in first_genre])
  d = describe_clusters(catalog, item_to_cluster, len(names))
  d.check_prefix_free()
  assert len(set(d.texts.tolist())) == len(names)
  named_by_genre = sum(k[0] == name for k, name in zip(d.keywords, names))
  assert named_by_genre >= len(names) - 1  # all but "(no genres listed)"
