"""Aesthetic alignment of retrieval models (Zhang et al., NeurIPS 2024): query rephrasing,
an aesthetic model, preference pairs from a relevance x aesthetics grid, ranked DPO,
HPIR-style and judge-based evaluation. Pure functions; trainers/align.py wires them up."""
