"""Registered training tasks. Importing this package imports every family module present
(``phantom_demo`` and the families' ``segmentation``, ``prediction``, ``synthesis``, ``triage``,
...); a family whose module is absent or fails to import is skipped (see ``IMPORT_ERRORS``)."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Dict

IMPORT_ERRORS: Dict[str, str] = {}

for _m in pkgutil.iter_modules(__path__):
    if _m.name.startswith("_"):
        continue
    try:
        importlib.import_module(f"{__name__}.{_m.name}")
    except Exception as _e:  # a broken family must not take the engine down
        IMPORT_ERRORS[_m.name] = f"{type(_e).__name__}: {_e}"
