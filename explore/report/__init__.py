"""The `report` stage: a run's tables and plots as report.md and a self-contained report.html."""
