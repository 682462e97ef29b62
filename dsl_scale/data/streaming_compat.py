"""The one place that imports mosaicml-streaming.

`import streaming` eagerly imports `streaming.vision`, which imports torchvision. PyPI's torchvision
wheels cannot load beside our pinned CPU torch, so the setup uninstalls it. When torchvision is
unavailable we register an empty placeholder for `streaming.vision` before importing `streaming`;
we never use its vision datasets. When torchvision imports fine, nothing is patched. The placeholder is
the registered framework patch "streaming-vision-placeholder" (dsl_scale/core/patches.py): version-checked,
and undoing it takes the placeholder out of sys.modules again (only ours, never a real `streaming.vision`).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

from dsl_scale.core import patches

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


PATCH = "streaming-vision-placeholder"

_placeholder: types.ModuleType | None = None  # one object, so re-applying after an undo restores the same module


def import_streaming() -> types.ModuleType:
    """Return the `streaming` module, importable with or without torchvision."""
    if not patches.is_applied(PATCH) and not _torchvision_importable():
        patches.apply(PATCH)
    return importlib.import_module("streaming")


@patches.implements(PATCH)
def _register_placeholder():
    global _placeholder
    if "streaming.vision" in sys.modules:  # a real one, or somebody else's placeholder: leave it
        return lambda: None
    if _placeholder is None:
        _placeholder = types.ModuleType("streaming.vision", _PLACEHOLDER_DOC)
        _placeholder.DSL_SCALE_PLACEHOLDER = True  # type: ignore[attr-defined]
    placeholder = sys.modules["streaming.vision"] = _placeholder

    def undo() -> None:
        if sys.modules.get("streaming.vision") is placeholder:
            del sys.modules["streaming.vision"]

    return undo
