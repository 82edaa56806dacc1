"""pyimgano-serve: the line service (KServe v2 / Open Inference Protocol over HTTP), docs/SERVING.md.

repository (the folders and version policies), registry (the versions served, hot reload, references),
batcher (dynamic batching per version), pipeline (a request's images in, its outputs back), protocol (v2
JSON and binary tensors), app (the Starlette endpoints), metrics (Prometheus), logs (JSON lines), errors
(a failed request's status), settings (the flags). The CLI is pyimgano/cli/serve.py. No torch.
"""
