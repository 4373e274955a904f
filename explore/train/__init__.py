"""The T5X-style trainer shared by the decoder LLM and the sequence recommender."""

from explore.train.batches import TrainingDataError
from explore.train.checkpoints import CheckpointError
from explore.train.checkpoints import TrainCheckpoints
from explore.train.checkpoints import checkpoint_steps
from explore.train.data import ArrayBatches
from explore.train.data import DataStateError
from explore.train.data import ResumableIterator
from explore.train.metrics import MetricWriter
from explore.train.metrics import peak_flops_for_device_kind
from explore.train.metrics import reduce_metrics
from explore.train.optimizer import OptimizerConfigError
from explore.train.optimizer import make_optimizer
from explore.train.task import TrainTask
from explore.train.tfevents import EventFileWriter
from explore.train.train_step import TrainState
from explore.train.train_step import TrainableFilterError
from explore.train.trainer import Trainer
from explore.train.trainer_config import TrainerConfig
from explore.train.trainer_config import TrainerConfigError
from explore.train.trainer_config import steps_for_epochs
from explore.train.trainer_config import TrainResult
