"""Offline evaluation of next-interest planners: baselines and novel-cluster hit@k."""
