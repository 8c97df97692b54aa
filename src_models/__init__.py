"""Network definitions for napari-radiogen: plain torch modules and their builders.

No file I/O, no napari, no numpy I/O here. Each builder function takes only JSON-able keyword
arguments so that a model card can name it (``"src_models.segmentation:build_segresnet"``).
"""
