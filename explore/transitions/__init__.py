"""Novel-interest transitions: examples, counts per tuple, curation and the LLM task source."""

from explore.transitions.counts import CurationError
from explore.transitions.counts import TupleCounts
from explore.transitions.counts import count_tuples
from explore.transitions.counts import curate
from explore.transitions.examples import TEST
from explore.transitions.examples import TRAIN
from explore.transitions.examples import NovelTransitions
from explore.transitions.examples import TransitionsError
from explore.transitions.examples import clusters_fingerprint
from explore.transitions.examples import novel_transitions
from explore.transitions.examples import time_split
from explore.transitions.task_source import TaskSourceError
from explore.transitions.task_source import export_task_source
from explore.transitions.task_source import format_history_prompt
from explore.transitions.task_source import read_task_source
