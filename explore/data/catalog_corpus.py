"""A domain corpus from an item catalog: one document per item from its title and text fields.

For real logs there is no hidden ground truth to write about; what a team has
is the domain's own text. For MovieLens the catalog holds each movie's title
(with its year), genres and user tags (`explore.data.movielens`); for generic
CSV logs, the item text column. Continued pretraining on these documents
teaches the planner's decoder the words the cluster descriptions are made of
and which of them go together, before it reads any transition.

The control (`shuffle_fields`) keeps every title and every field's texts but
gives each item's fields to other items (one seeded permutation per field):
the same words at the same frequencies, with the associations between a
movie's title, genres and tags broken.
"""

from __future__ import annotations

import numpy as np

from explore.data.schema import ItemCatalog


class CatalogCorpusError(ValueError):
  """A catalog that gives no documents."""


def catalog_corpus(catalog: ItemCatalog, max_documents: int | None = None,
                   seed: int = 0, shuffle_fields: bool = False) -> list[str]:
  """"<title>. <field>: <text>. ..." per item with any text, in a seeded random order.

  `max_documents` keeps a uniform sample of that many items (None: every item).
  `shuffle_fields`: the control corpus (module docstring).
  Tabs and line breaks become spaces, so every document is one line.
  """
  fields = sorted(catalog.text)
  rng = np.random.default_rng(seed)
  count = len(catalog.item_ids)
  texts = {field: np.asarray(catalog.text[field]) for field in fields}
  if shuffle_fields:
    texts = {field: text[rng.permutation(count)] for field, text in texts.items()}
  documents = []
  for i in range(count):
    parts = [str(catalog.title[i]).strip()] if str(catalog.title[i]).strip() else []
    parts += [f"{field}: {str(texts[field][i]).strip()}" for field in fields
              if str(texts[field][i]).strip()]
    if parts:
      documents.append(" ".join(". ".join(parts).split()) + ".")
  if not documents:
    raise CatalogCorpusError("catalog_corpus: no item has a title or text to write about")
  order = rng.permutation(len(documents))
  if max_documents is not None:
    order = order[:max_documents]
  return [documents[i] for i in order.tolist()]
