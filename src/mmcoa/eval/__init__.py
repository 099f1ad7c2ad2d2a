"""Evaluation: the zero-shot runner, metrics and result records."""

from mmcoa.eval.results import format_table, read_records, write_records
from mmcoa.eval.retrieval import RETRIEVAL_ATTACKS, evaluate_retrieval, recall_at_k
from mmcoa.eval.runner import evaluate, sample_indices

__all__ = [
    "RETRIEVAL_ATTACKS",
    "evaluate",
    "evaluate_retrieval",
    "recall_at_k",
    "format_table",
    "read_records",
    "sample_indices",
    "write_records",
]
