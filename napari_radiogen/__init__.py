"""napari-radiogen: glioma MRI radiogenomics in napari.

``napari_radiogen.core`` is the headless core (never imports Qt, napari or magicgui);
``napari_radiogen.napari`` holds the thin plugin layer; ``src_models`` the networks.
"""
__version__ = "0.1.0"
