"""Per-example explanations of a classifier's predictions (pure functions, no I/O).

* :func:`shapley_values`: exact Shapley values of the modalities, by masking them.
* :func:`integrated_gradients`: attributions over one float input (image, audio, vector).
* :func:`attention_maps`: the attention weights of the attention fusion blocks.
"""
from mmjax.explain.attention import attention_maps, collect_weights
from mmjax.explain.integrated_gradients import IntegratedGradients, input_value_fn, integrated_gradients, quadrature
from mmjax.explain.shapley import ExplainError, MAX_MODALITIES, coalition_batch, coalitions, shapley_values

__all__ = ["ExplainError", "IntegratedGradients", "MAX_MODALITIES", "attention_maps", "coalition_batch",
           "coalitions", "collect_weights", "input_value_fn", "integrated_gradients", "quadrature",
           "shapley_values"]
