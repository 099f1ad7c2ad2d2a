"""Evaluation: the zero-shot runner, metrics and result records."""

from mmcoa.eval.results import format_table, read_records, write_records
from mmcoa.eval.retrieval import evaluate_retrieval, recall_at_k
from mmcoa.eval.runner import evaluate, sample_indices

__all__ = [
    "evaluate",
    "evaluate_retrieval",
    "recall_at_k",
    "format_table",
    "read_records",
    "sample_indices",
    "write_records",
]
