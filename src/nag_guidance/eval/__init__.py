"""Evaluation of NAG against CFG and no guidance on the embedded model (and CLIP scores for user models)."""
