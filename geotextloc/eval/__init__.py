"""Evaluation: the CVG-Text protocol (metrics), the spatial index (spatial) and the FAISS gallery index (index)."""

from geotextloc.eval.metrics import ProtocolReport, evaluate, evaluate_embeddings, evaluate_ranking

__all__ = ["ProtocolReport", "evaluate", "evaluate_embeddings", "evaluate_ranking"]
