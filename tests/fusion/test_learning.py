"""Every registered fusion block learns a task that needs both modalities.

The synthetic task (mmjax/data/toy_task.py) labels an example by the
pair of hidden classes (c_a, c_b), each carried by one modality, so a model
seeing one modality alone cannot beat 1/k = 0.5 accuracy. Each block is trained
with its tiny config (mmjax/fusion/tiny_configs.py) by the library's full-batch fit.
"""
import pytest

pytestmark = pytest.mark.slow  # a compiled training run per block (~3-12 s of CPU each)

import mmjax.fusion
from mmjax.data.toy_task import ToyTask, without_modality
from mmjax.fusion.tiny_configs import TINY_CONFIGS, tiny_classifier_config
from mmjax.train.full_batch import fit_full_batch

TASK = ToyTask()
TRAIN, TEST = TASK.splits()
STEPS = 120
# Compile time dominates on CPU: skip XLA's backend optimisations.
RUN = dict(steps=STEPS, fast_compile=True)


def _fit(block, train=TRAIN, test=TEST):
    return fit_full_batch(tiny_classifier_config(block, TASK.modalities), TASK.num_classes, train, test, **RUN)


def test_single_modality_is_capped():
    """Sanity check of the task itself: with modality b masked out, accuracy stays near 1/k."""
    result = _fit("concat", without_modality(TRAIN, "b"), without_modality(TEST, "b"))
    assert TASK.single_modality_max_accuracy == 0.5
    # (Train accuracy may exceed the cap by memorising noise; held-out cannot.)
    assert result.test_accuracy < TASK.single_modality_max_accuracy + 0.1


@pytest.mark.parametrize("block", mmjax.fusion.names())
def test_block_learns_task_needing_both_modalities(block):
    if block not in TINY_CONFIGS:
        pytest.fail(f"fusion block {block!r} has no entry in mmjax.fusion.tiny_configs.TINY_CONFIGS")
    result = _fit(block)
    assert result.train_accuracy > 0.9, result
    assert result.test_accuracy > 0.8, result
