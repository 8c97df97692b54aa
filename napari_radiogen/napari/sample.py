"""npe2 sample data: the bundled real case and a synthetic phantom."""
from __future__ import annotations

from typing import List

from .layers import LayerData, case_to_layer_data


def sample_case() -> List[LayerData]:
    """BraTS2021_00006 (brain-cropped; UCSF-PDGM, TCIA, CC BY 4.0): four sequences and the
    expert segmentation, at their physical positions."""
    from ..core.sample import sample_case_path
    from .reader import read_path

    return read_path(str(sample_case_path()))


def phantom_case() -> List[LayerData]:
    """A synthetic glioma phantom (deterministic, seed 0): four sequences and labels."""
    from ..core.phantom import make_phantom

    return case_to_layer_data(make_phantom(seed=0))
