"""The one place that imports mosaicml-streaming.

`import streaming` eagerly imports `streaming.vision`, which imports torchvision. PyPI's torchvision
wheels cannot load beside our pinned CPU torch, so the setup uninstalls it. When torchvision is
unavailable we register an empty placeholder for `streaming.vision` before importing `streaming`;
we never use its vision datasets. When torchvision imports fine, nothing is patched.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

_PLACEHOLDER_DOC = (
    "Placeholder registered by dsl_scale.data.streaming_compat: torchvision is not importable here, "
    "so streaming's vision datasets are unavailable. dsl_scale only uses MDS text/token shards."
)


def _torchvision_importable() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        importlib.import_module("torchvision")
    except Exception:  # a broken torchvision raises all sorts (RuntimeError, OSError, ImportError)
        return False
    return True


def import_streaming() -> types.ModuleType:
    """Return the `streaming` module, importable with or without torchvision."""
    if "streaming" in sys.modules:
        return sys.modules["streaming"]
    if "streaming.vision" not in sys.modules and not _torchvision_importable():
        placeholder = types.ModuleType("streaming.vision", _PLACEHOLDER_DOC)
        placeholder.DSL_SCALE_PLACEHOLDER = True  # type: ignore[attr-defined]
        sys.modules["streaming.vision"] = placeholder
    return importlib.import_module("streaming")
