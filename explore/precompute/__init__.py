"""The offline planner table: every K-tuple of clusters -> its top-n novel clusters."""

from explore.precompute.table import TableError
from explore.precompute.table import TupleTable
from explore.precompute.table import distinct_tuples
from explore.precompute.table import num_rows
from explore.precompute.table import text_fingerprint
from explore.precompute.table import tuple_index
