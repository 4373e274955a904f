"""explore: LLM-planned interest exploration for large-scale recommenders.

Importing the package is cheap: it imports neither JAX nor TensorFlow; each
stage imports what it needs where it is used.
"""

__version__ = "0.1.0"
