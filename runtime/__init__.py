"""The edge runtime: ONNX Runtime, numpy and OpenCV only. Nothing here may import torch."""

from pyimgano.runtime.bundle import Bundle, BundleError, open_bundle
from pyimgano.runtime.engine import Engine, EngineError
from pyimgano.runtime.inspector import Inspection, Inspector

__all__ = ["Bundle", "BundleError", "Engine", "EngineError", "Inspection", "Inspector", "open_bundle"]
