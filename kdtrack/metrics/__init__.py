"""Evaluation: MOTChallenge tracking metrics (motmetrics + TrackEval) and person-search mAP / top-k."""

from kdtrack.metrics.mot import SequenceEvaluation, evaluate_sequence, format_table, summarize_sequences
from kdtrack.metrics.mot_files import evaluate_mot_files, find_sequence_files, score_sequence_files
from kdtrack.metrics.person_search import (
    GalleryImage,
    Query,
    evaluate_person_search,
    load_person_search_npz,
    queries_from_manifest,
    save_person_search_npz,
)

__all__ = [
    "GalleryImage",
    "Query",
    "SequenceEvaluation",
    "evaluate_mot_files",
    "evaluate_person_search",
    "evaluate_sequence",
    "find_sequence_files",
    "format_table",
    "load_person_search_npz",
    "queries_from_manifest",
    "save_person_search_npz",
    "score_sequence_files",
    "summarize_sequences",
]
