"""cytodata: pretraining corpora from microscopy screens, streamed into PyTorch."""

__version__ = "0.1.0"
