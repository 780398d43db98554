"""Evaluation of teachers and students: perplexity, agreement with the teacher, per-layer distances."""

from mohawk.evaluation.perplexity import agreement, layer_distances, perplexity

__all__ = ["agreement", "layer_distances", "perplexity"]
