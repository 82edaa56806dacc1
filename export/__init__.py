"""Turns a workbench run into a bundle: ONNX scoring graph, thresholds, inference config, checksums."""
