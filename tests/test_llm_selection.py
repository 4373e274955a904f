"""Round bookkeeping of the llm stage's checkpoint selection (`explore.llm.selection`)."""

import pytest

from explore.llm import selection


def _round(step, all_hit, unseen_hit):
  return {"step": step, "validation": {"all": {"hit@5": all_hit},
                                       "unseen": {"hit@5": unseen_hit}}}


def test_round_steps_end_at_train_steps():
  assert selection.round_steps(100, 25) == [25, 50, 75, 100]
  assert selection.round_steps(100, 30) == [30, 60, 90, 100]
  assert selection.round_steps(20, 50) == [20]


def test_best_round_takes_the_bucket_max_and_the_earlier_of_ties():
  rounds = [_round(25, 0.30, 0.20), _round(50, 0.35, 0.18), _round(75, 0.35, 0.25)]
  assert selection.best_round(rounds, "hit@5", "all")["step"] == 50
  assert selection.best_round(rounds, "hit@5", "unseen")["step"] == 75
  # A bucket without validation examples (rate None) never wins over a measured one.
  assert selection.best_round([_round(25, None, 0.1), _round(50, 0.0, 0.1)], "hit@5",
                              "all")["step"] == 50
  with pytest.raises(selection.SelectionError, match="no selection round"):
    selection.best_round([], "hit@5", "all")


class _FakeTrainer:
  """Counts the steps it is asked to train to; the loss falls with the step."""

  def __init__(self):
    self.config = type("Config", (), {"train_steps": 0})()
    self.step = 0
    self.calls = []

  def train(self, batches):
    del batches
    self.calls.append(self.config.train_steps)
    self.step = max(self.step, self.config.train_steps)
    history = [{"step": s, "loss": 1.0 / s} for s in range(10, self.step + 1, 10)]
    return type("Result", (), {"stopped_reason": "done", "history": history,
                               "step": self.step})()


def test_train_in_rounds_validates_each_round_and_resumes_after_recorded_ones(tmp_path):
  log = tmp_path / selection.SELECTION_LOG
  seen = []

  def validate(step):
    seen.append(step)
    return {"all": {"hit@5": step / 100}}

  trainer = _FakeTrainer()
  _, rounds = selection.train_in_rounds(trainer, None, [10, 20, 30], validate, log)
  assert [r["step"] for r in rounds] == [10, 20, 30] and seen == [10, 20, 30]
  assert [r["train_loss"] for r in rounds] == [0.1, 0.05, 1.0 / 30]
  # A rerun repeats no recorded round; a longer one trains and validates the new ones only.
  seen.clear()
  trainer = _FakeTrainer()
  _, rounds = selection.train_in_rounds(trainer, None, [10, 20, 30, 40], validate, log)
  assert seen == [40] and trainer.calls == [40]
  assert [r["step"] for r in rounds] == [10, 20, 30, 40]
  seen.clear()
  trainer = _FakeTrainer()
  selection.train_in_rounds(trainer, None, [10, 20, 30, 40], validate, log)
  assert seen == [] and trainer.calls == [40]  # nothing left: it reopens the end
