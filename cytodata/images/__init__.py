"""Images: read per-channel files (``io``), normalize intensities, crop cells, image QC."""

from .io import image_shape, read_file, read_image

__all__ = ["read_image", "read_file", "image_shape"]
