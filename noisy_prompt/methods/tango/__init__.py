"""TANGO: text-anchored classifier, anchor-guided purification and anchor sentences."""
from .anchors import load_cupl, match_descriptions, template_sentences
from .neighbours import blocked_topk, iter_topk_blocks
from .purification import (
    KNN_VOTES,
    PurificationResult,
    knn_label_vote,
    purify,
    purify_dense,
    resolve_k,
    semantic_to_vision,
    vision_to_semantic,
)
from .tac import TAC_FORMS, class_anchor_table, tac_log_probs, tac_temperature

__all__ = [
    "KNN_VOTES",
    "TAC_FORMS",
    "PurificationResult",
    "blocked_topk",
    "class_anchor_table",
    "iter_topk_blocks",
    "knn_label_vote",
    "load_cupl",
    "match_descriptions",
    "purify",
    "purify_dense",
    "resolve_k",
    "semantic_to_vision",
    "tac_log_probs",
    "tac_temperature",
    "template_sentences",
    "vision_to_semantic",
]
