"""pyimgano: industrial visual anomaly detection.

The workbench (`pyimgano.workbench`, needs torch) trains and evaluates detectors; the exporter
(`pyimgano.export`) turns a run into a bundle; the edge engine (`pyimgano.runtime`) scores images from a
bundle with ONNX Runtime alone. Importing this package must never import torch: the edge install has none.
"""

__version__ = "0.1.0"
