"""The int8 rewrite of the bank search (export/quantize.py) against the fp32 search it replaces."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from pyimgano.export.quantize import QuantizeError, quantize_bank_search  # noqa: E402
from pyimgano.models.patchcore import MemoryBank  # noqa: E402


class Search(torch.nn.Module):
    """Just the nearest-neighbour search of PatchCoreGraph, under the same buffer names ("bank.rows_N")."""

    def __init__(self, bank: torch.Tensor, chunk_rows: int):
        super().__init__()
        self.bank = MemoryBank(bank, chunk_rows=chunk_rows)

    def forward(self, points):
        d2, index = self.bank.nearest(self.bank.centre(points))
        return d2, index


def export(module: torch.nn.Module, example: torch.Tensor, path) -> onnx.ModelProto:
    torch.onnx.export(module, (example,), str(path), input_names=["points"], output_names=["d2", "index"],
                      dynamic_axes={"points": {0: "n"}}, opset_version=17, dynamo=False)
    return onnx.load(str(path))


def run(model: onnx.ModelProto, points: np.ndarray):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"points": points})


def clustered(rng, rows: int, dim: int, centres: int) -> np.ndarray:
    """Rows around `centres` cluster centres with a positive offset, like post-ReLU patch features."""
    middle = rng.normal(2.0, 1.0, (centres, dim))
    return (middle[rng.integers(0, centres, rows)] + rng.normal(0, 0.3, (rows, dim))).astype(np.float32)


def test_int8_search_finds_the_same_neighbours_with_close_distances(tmp_path):
    rng = np.random.default_rng(0)
    bank = clustered(rng, 3000, 64, 40)
    # Queries: bank rows moved a little (normal patches) and far from every row (defects).
    near = bank[rng.integers(0, len(bank), 400)] + rng.normal(0, 0.05, (400, 64)).astype(np.float32)
    far = clustered(rng, 100, 64, 5) + 3.0
    queries = np.concatenate([near, far]).astype(np.float32)
    model = export(Search(torch.from_numpy(bank), chunk_rows=1024), torch.from_numpy(queries[:2]), tmp_path / "s.onnx")
    d2_fp32, index_fp32 = run(model, queries)

    assert quantize_bank_search(model) == 3  # 3000 rows in chunks of 1024
    ops = {node.op_type for node in model.graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops and "Gemm" not in ops
    d2_int8, index_int8 = run(model, queries)

    distance_fp32, distance_int8 = np.sqrt(d2_fp32), np.sqrt(d2_int8)
    # The int8 GEMM only picks the row; the distance to it is fp32, so it can never undercut the true
    # nearest distance, and where the same row is picked it is the same number.
    assert (distance_int8 >= distance_fp32 - 1e-5).all()
    assert (index_int8 == index_fp32).mean() >= 0.95
    relative = (distance_int8 - distance_fp32) / distance_fp32
    assert relative[400:].max() < 0.01  # anomalous patches: the distance that decides a defect
    assert np.quantile(relative[:400], 0.99) < 0.05  # normal patches, near a row: no cancellation noise


def test_graph_without_bank_search_is_refused(tmp_path):
    class Plain(torch.nn.Module):
        def forward(self, points):
            return points.sum(dim=1), points.argmax(dim=1)

    model = export(Plain(), torch.zeros(2, 4), tmp_path / "plain.onnx")
    with pytest.raises(QuantizeError, match="bank.rows_"):
        quantize_bank_search(model)


@pytest.mark.parametrize(("groups", "expected"), [(1, True), (8, False)])
def test_convolutions_are_quantized_only_without_grouped_ones(tmp_path, groups, expected):
    """Depthwise backbones (mobilenet_v2) keep fp32 convolutions: int8 made them slower and less exact."""
    from pyimgano.export.quantize import quantizes_convolutions

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 3, groups=groups))
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 16, 16),), str(path), opset_version=17, dynamo=False)
    assert quantizes_convolutions(onnx.load(str(path))) is expected
