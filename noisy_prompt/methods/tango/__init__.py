"""TANGO: text-anchored classifier, anchor-guided purification and anchor sentences."""
from .anchors import DEFAULT_ALIASES, load_cupl, match_descriptions, template_sentences
from .neighbours import blocked_topk, iter_topk_blocks
from .purification import (
    PurificationResult,
    knn_label_vote,
    purify,
    purify_dense,
    semantic_to_vision,
    vision_to_semantic,
)
from .tac import class_anchor_table, tac_log_probs

__all__ = [
    "DEFAULT_ALIASES",
    "PurificationResult",
    "blocked_topk",
    "class_anchor_table",
    "iter_topk_blocks",
    "knn_label_vote",
    "load_cupl",
    "match_descriptions",
    "purify",
    "purify_dense",
    "semantic_to_vision",
    "tac_log_probs",
    "template_sentences",
    "vision_to_semantic",
]
