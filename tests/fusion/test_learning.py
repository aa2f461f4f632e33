"""Every registered fusion block learns a task that needs both modalities.

The synthetic task (experiments/toy_fusion_task.py) labels an example by the
pair of hidden classes (c_a, c_b), each carried by one modality, so a model
seeing one modality alone cannot beat 1/k = 0.5 accuracy.
"""
import pytest

pytestmark = pytest.mark.slow  # a compiled training run per block (~3-12 s of CPU each)

import mmjax.fusion
from experiments.toy_fusion_task import FUSION_CONFIGS, ToyTask, train_and_evaluate

TASK = ToyTask()
STEPS = 120
# Compile time dominates on CPU: skip XLA's backend optimisations.
RUN = dict(steps=STEPS, fast_compile=True)


def test_single_modality_is_capped():
    """Sanity check of the task itself: with modality b masked out, accuracy stays near 1/k."""
    result = train_and_evaluate("concat", TASK, drop_modality="b", **RUN)
    assert TASK.single_modality_max_accuracy == 0.5
    # (Train accuracy may exceed the cap by memorising noise; held-out cannot.)
    assert result.test_accuracy < TASK.single_modality_max_accuracy + 0.1


@pytest.mark.parametrize("block", mmjax.fusion.names())
def test_block_learns_task_needing_both_modalities(block):
    if block not in FUSION_CONFIGS:
        pytest.fail(f"fusion block {block!r} has no entry in experiments.toy_fusion_task.FUSION_CONFIGS")
    result = train_and_evaluate(block, TASK, **RUN)
    assert result.train_accuracy > 0.9, result
    assert result.test_accuracy > 0.8, result
