"""Evaluation on a lesion-grouped split: every figure of the model card, and the offline outlier set."""
