"""Baseline trainers (EfficientNet weak-label classifier, DINO / WS-DINO, mean-teacher + ArcFace).

Planned for the next milestone: they consume ``cytodata.loaders.StreamingDataset`` and emit
checkpoints and embeddings that ``cytodata.evaluate`` reads. Nothing is implemented here yet.
"""
