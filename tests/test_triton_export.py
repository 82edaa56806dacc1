"""pyimgano-export --format triton: a Triton model repository whose config.pbtxt Triton's own ModelConfig
protobuf parses and whose every field agrees with the ONNX graph, and whose version folders are bundles
that score exactly as the bundle they came from.

The layout tests are marked `edge` (no torch needed); the export from a run needs the workbench.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from pyimgano.cli.errors import classify
from pyimgano.export import pbtxt
from pyimgano.export.triton import (
    DEFAULT_MAX_BATCH_SIZE,
    TRITON_CONFIG,
    TritonOptions,
    TritonRepositoryError,
    triton_version,
    write_triton_model,
)
from pyimgano.runtime.bundle import open_bundle
from pyimgano.runtime.engine import Engine
from pyimgano.runtime.exit_codes import ExitCode
from pyimgano.runtime.images import read_rgb, to_contract
from pyimgano.runtime.manifest import MANIFEST_NAME

text_format = pytest.importorskip("google.protobuf.text_format")


def model_config_pb2():
    """Triton's ModelConfig message, from the tritonclient package. `tritonclient.grpc`'s __init__ needs the
    [grpc] extra (grpcio), which the test environments do not install; the generated module itself needs
    only protobuf, so it is loaded from its file."""
    tritonclient = pytest.importorskip("tritonclient")
    try:
        from tritonclient.grpc import model_config_pb2 as module
        return module
    except RuntimeError:  # "The installation does not include grpc support"
        path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
        spec = importlib.util.spec_from_file_location("tritonclient_model_config_pb2", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def parse_config(path: Path):
    pb2 = model_config_pb2()
    return text_format.Parse(path.read_text(encoding="utf-8"), pb2.ModelConfig()), pb2


def graph_io(model_path: Path) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return {t.name: (t.type, t.shape) for t in session.get_inputs() + session.get_outputs()}


def sample_batch(edge_fixture: dict, contract) -> np.ndarray:
    test = edge_fixture["category_dir"] / "test"
    paths = sorted((test / "good").glob("*.png"))[:2] + sorted(p for p in test.rglob("*.png") if p.parent.name != "good")[:2]
    return np.stack([to_contract(read_rgb(path), contract) for path in paths])


def engine_scores(bundle_path: Path, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return Engine(open_bundle(bundle_path), device="cpu").score_batch(batch)


def bundle_with_version(edge_fixture: dict, tmp_path: Path, version: str) -> Path:
    """A copy of the fixture bundle whose manifest says another version (the manifest is not checksummed)."""
    target = tmp_path / f"bundle-{version}"
    shutil.copytree(edge_fixture["bundle_dir"], target)
    manifest = json.loads((target / MANIFEST_NAME).read_text(encoding="utf-8"))
    manifest["version"] = version
    (target / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return target


def repository_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def check_config_against_graph(config_path: Path, version_dir: Path, max_batch_size: int) -> None:
    """Every field of config.pbtxt that Triton checks against the model, checked against the graph and the
    manifest of the version it serves."""
    config, pb2 = parse_config(config_path)
    manifest = json.loads((version_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    io = graph_io(version_dir / manifest["onnx"]["file"])
    types = {"tensor(uint8)": pb2.TYPE_UINT8, "tensor(float)": pb2.TYPE_FP32}
    assert config.name == config_path.parent.name == manifest["name"]
    assert (config.platform, config.backend) == ("onnxruntime_onnx", "onnxruntime")
    assert config.default_model_filename == manifest["onnx"]["file"]
    assert config.max_batch_size == max_batch_size
    assert config.version_policy.latest.num_versions == 1
    [image] = config.input
    graph_type, graph_shape = io[image.name]
    assert image.name == manifest["onnx"]["input"]
    assert image.data_type == types[graph_type] == pb2.TYPE_UINT8
    assert isinstance(graph_shape[0], str)  # the dynamic batch dimension Triton batches along
    assert list(image.dims) == graph_shape[1:] == [manifest["input"]["height"], manifest["input"]["width"], 3]
    assert not image.HasField("reshape")
    outputs = {o.name: o for o in config.output}
    assert set(outputs) == {manifest["outputs"]["score"], manifest["outputs"]["map"]}
    score = outputs[manifest["outputs"]["score"]]
    graph_type, graph_shape = io[score.name]
    assert score.data_type == types[graph_type] == pb2.TYPE_FP32
    # The graph's [batch] is declared [1] and reshaped to []: what Triton's auto-complete writes too.
    assert graph_shape[1:] == [] and list(score.dims) == [1]
    assert score.HasField("reshape") and list(score.reshape.shape) == []
    anomaly_map = outputs[manifest["outputs"]["map"]]
    graph_type, graph_shape = io[anomaly_map.name]
    assert anomaly_map.data_type == types[graph_type] == pb2.TYPE_FP32
    assert list(anomaly_map.dims) == graph_shape[1:] == manifest["outputs"]["map_shape"]
    assert not anomaly_map.HasField("reshape")
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    preferred = list(config.dynamic_batching.preferred_batch_size)
    assert preferred and all(1 <= size <= max_batch_size for size in preferred)
    assert 0 < config.dynamic_batching.max_queue_delay_microseconds <= 10_000
    [group] = config.instance_group
    assert (group.kind, group.count) == (pb2.ModelInstanceGroup.KIND_AUTO, 1)
    [cuda] = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert cuda.name == "cuda" and dict(cuda.parameters) == {"use_tf32": "0"}
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters["cudnn_conv_algo_search"] == "1"  # HEURISTIC, as the engine's CUDA provider
    assert json.loads(parameters["pyimgano_manifest"]) == manifest
    assert parameters["pyimgano_bundle"] == f"{manifest['name']}-{manifest['version']}"
    assert float(parameters["pyimgano_image_threshold"]) == manifest["thresholds"]["image"]["value"]
    assert float(parameters["pyimgano_pixel_threshold"]) == manifest["thresholds"]["pixel"]["value"]


def test_export_from_a_run_into_a_triton_repository(edge_fixture, tmp_path):
    """The real run through pyimgano-export --format triton; the version folder scores as the bundle the
    same run exported (the demo's) on normal and defective images."""
    pytest.importorskip("torch")
    from pyimgano.export.cli import main as export_main

    run_dir = edge_fixture["bundle_dir"].parent.parent / "run"
    assert (run_dir / "report.json").is_file(), f"the fixture's run directory is missing: {run_dir}"
    repository = tmp_path / "models"
    result = CliRunner().invoke(export_main, ["--from-run", str(run_dir), "--out", str(repository), "--format",
                                              "triton", "--bundle-version", "3"])
    assert result.exit_code == ExitCode.OK, result.output
    original = open_bundle(edge_fixture["bundle_dir"])
    model_dir = repository / original.manifest.name
    version_dir = model_dir / "3"
    assert f"triton model: {model_dir} (version 3" in result.output
    # The repository holds the model and nothing else: no .zip, no staging or scratch folder.
    assert sorted(p.name for p in repository.iterdir()) == [model_dir.name]
    assert sorted(p.name for p in model_dir.iterdir()) == ["3", TRITON_CONFIG]
    assert sorted(p.name for p in version_dir.iterdir()) == sorted(["model.onnx", MANIFEST_NAME, "infer_config.json"])
    check_config_against_graph(model_dir / TRITON_CONFIG, version_dir, DEFAULT_MAX_BATCH_SIZE)

    exported = open_bundle(version_dir)
    assert exported.manifest.version == "3"
    batch = sample_batch(edge_fixture, original.context.steps.contract)
    scores, maps = engine_scores(version_dir, batch)
    reference_scores, reference_maps = engine_scores(edge_fixture["bundle_dir"], batch)
    np.testing.assert_allclose(scores, reference_scores, rtol=1e-5)
    np.testing.assert_allclose(maps, reference_maps, rtol=1e-5, atol=1e-6)
    # Normal and defective images are on both sides of the threshold, so equal labels mean something.
    threshold = exported.context.image_threshold
    assert (scores > threshold).tolist() == (reference_scores > threshold).tolist() == [False, False, True, True]


def test_a_non_integer_version_is_refused_before_the_export(edge_fixture, tmp_path):
    pytest.importorskip("torch")
    from pyimgano.export.cli import main as export_main

    run_dir = edge_fixture["bundle_dir"].parent.parent / "run"
    repository = tmp_path / "models"
    result = CliRunner().invoke(export_main, ["--from-run", str(run_dir), "--out", str(repository), "--format",
                                              "triton", "--bundle-version", "1.2"])
    assert result.exit_code == ExitCode.USAGE
    assert "bundle version '1.2' cannot be a Triton model version" in result.output
    assert not repository.exists()
    result = CliRunner().invoke(export_main, ["--from-run", str(run_dir), "--out", str(tmp_path / "b"),
                                              "--triton-max-batch-size", "8"])
    assert result.exit_code == ExitCode.USAGE
    assert "--triton-max-batch-size: only with --format triton" in result.output


@pytest.mark.parametrize("text", ["0", "01", "1.2", "-1", "", "v1", "1 ", str(2**63)])
def test_triton_versions_are_positive_integers_without_leading_zeros(text):
    with pytest.raises(TritonRepositoryError, match="cannot be a Triton model version"):
        triton_version(text)
    assert triton_version("10") == 10


@pytest.mark.edge
def test_the_version_folder_is_the_bundle_unchanged_and_scores_identically(edge_fixture, tmp_path):
    repository = tmp_path / "models"
    model = write_triton_model(edge_fixture["bundle_dir"], repository, TritonOptions(max_batch_size=8))
    source = edge_fixture["bundle_dir"]
    assert repository_tree(model.version_dir) == repository_tree(source)
    check_config_against_graph(model.config, model.version_dir, 8)
    contract = open_bundle(source).context.steps.contract
    batch = sample_batch(edge_fixture, contract)
    for ours, theirs in zip(engine_scores(model.version_dir, batch), engine_scores(source, batch)):
        assert np.array_equal(ours, theirs)
    # An archive lays out the same: its files, not the .zip, go into the version folder.
    from_archive = write_triton_model(edge_fixture["archive"], tmp_path / "from-zip")
    assert repository_tree(from_archive.version_dir) == repository_tree(source)
    assert not any(p.suffix == ".zip" for p in (tmp_path / "from-zip").rglob("*"))


@pytest.mark.edge
def test_cpu_instances_carry_no_cuda_settings(edge_fixture, tmp_path):
    model = write_triton_model(edge_fixture["bundle_dir"], tmp_path / "models", TritonOptions(instance_kind="cpu"))
    config, pb2 = parse_config(model.config)
    assert [g.kind for g in config.instance_group] == [pb2.ModelInstanceGroup.KIND_CPU]
    assert not config.HasField("optimization")
    assert "cudnn_conv_algo_search" not in config.parameters


@pytest.mark.edge
def test_an_existing_version_folder_is_refused_and_left_as_it_was(edge_fixture, tmp_path):
    repository = tmp_path / "models"
    model = write_triton_model(edge_fixture["bundle_dir"], repository)
    before = repository_tree(repository)
    with pytest.raises(TritonRepositoryError, match="version 1 of model .* already exists") as refused:
        write_triton_model(edge_fixture["bundle_dir"], repository)
    assert classify(refused.value) == (ExitCode.USAGE, "error")
    assert repository_tree(repository) == before
    assert sorted(p.name for p in model.model_dir.iterdir()) == ["1", TRITON_CONFIG]  # no staging left behind


@pytest.mark.edge
def test_a_new_version_joins_the_model_and_the_config_describes_the_highest(edge_fixture, tmp_path):
    repository = tmp_path / "models"
    write_triton_model(bundle_with_version(edge_fixture, tmp_path, "1"), repository)
    five = write_triton_model(bundle_with_version(edge_fixture, tmp_path, "5"), repository)
    assert five.served_version == 5
    # A lower version added later does not change what `latest 1` serves, and the config says so.
    four = write_triton_model(bundle_with_version(edge_fixture, tmp_path, "4"), repository)
    assert four.served_version == 5
    assert sorted(p.name for p in four.model_dir.iterdir()) == ["1", "4", "5", TRITON_CONFIG]
    for version in ("1", "4", "5"):
        assert open_bundle(four.model_dir / version).manifest.version == version
    config, _ = parse_config(four.config)
    assert config.parameters["pyimgano_bundle"].string_value.endswith("-5")
    assert json.loads(config.parameters["pyimgano_manifest"].string_value)["version"] == "5"
    check_config_against_graph(four.config, four.model_dir / "5", DEFAULT_MAX_BATCH_SIZE)


@pytest.mark.edge
def test_a_model_whose_config_has_other_tensors_is_refused(edge_fixture, tmp_path):
    repository = tmp_path / "models"
    model = write_triton_model(bundle_with_version(edge_fixture, tmp_path, "1"), repository)
    # The existing model (say, trained at 128x128 and exported by hand) returns a smaller map.
    text = model.config.read_text(encoding="utf-8")
    assert text.count("dims: [ 256, 256 ]") == 1
    model.config.write_text(text.replace("dims: [ 256, 256 ]", "dims: [ 128, 128 ]"), encoding="utf-8")
    before = repository_tree(repository)
    with pytest.raises(TritonRepositoryError, match=r"another signature \(output maps TYPE_FP32 dims \[128, 128\], "
                                                    r"this bundle has maps TYPE_FP32 dims \[256, 256\]\)"):
        write_triton_model(bundle_with_version(edge_fixture, tmp_path, "2"), repository)
    assert repository_tree(repository) == before
    # A folder that is some other kind of model is not added to either.
    model.config.write_text('name: "x"\nplatform: "tensorrt_plan"\nmax_batch_size: 8\n', encoding="utf-8")
    with pytest.raises(TritonRepositoryError, match="not an ONNX Runtime model"):
        write_triton_model(bundle_with_version(edge_fixture, tmp_path, "3"), repository)
    assert not (model.model_dir / "3").exists()


@pytest.mark.edge
def test_a_bundle_with_a_non_integer_version_is_refused(edge_fixture, tmp_path):
    with pytest.raises(TritonRepositoryError, match="bundle version '1.0' cannot be a Triton model version"):
        write_triton_model(bundle_with_version(edge_fixture, tmp_path, "1.0"), tmp_path / "models")
    assert not (tmp_path / "models").exists()


@pytest.mark.edge
@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_string_parameter_reads_back_the_same_in_protobuf_and_in_our_reader(value):
    """The manifest travels as a string parameter: quotes, backslashes, newlines and non-ASCII must survive
    both protobuf's text parser (what Triton uses) and the exporter's own reader."""
    text = pbtxt.render({"parameters": [{"key": "k", "value": {"string_value": value}}]})
    config = text_format.Parse(text, model_config_pb2().ModelConfig())
    assert config.parameters["k"].string_value == value
    assert pbtxt.parse(text)["parameters"][0]["value"][0]["string_value"] == [value]


@pytest.mark.edge
def test_pyimgano_serve_serves_the_triton_repository(edge_fixture, tmp_path):
    """The same folder a Triton server would load, served by pyimgano-serve: the version the config's policy
    names (the highest) answers, and its scores are the bundle's."""
    import signal
    import sys

    if importlib.util.find_spec("pyimgano.cli.serve") is None:
        pytest.skip("pyimgano-serve (pyimgano.cli.serve) cannot be imported yet")
    triton = pytest.importorskip("tritonclient.http")
    from conftest import start_serve

    repository = tmp_path / "models"
    write_triton_model(bundle_with_version(edge_fixture, tmp_path, "1"), repository)
    model = write_triton_model(bundle_with_version(edge_fixture, tmp_path, "2"), repository)
    process, port = start_serve(sys.executable, repository, tmp_path / "serve.log", "--threads", "1")
    try:
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_ready()
        assert client.get_model_metadata(model.name)["versions"] == ["2"]
        contract = open_bundle(model.version_dir).context.steps.contract
        batch = sample_batch(edge_fixture, contract)
        tensor = triton.InferInput("images", list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch)
        result = client.infer(model.name, [tensor], outputs=[triton.InferRequestedOutput("score")])
        assert result.get_response()["model_version"] == "2"
        expected, _ = engine_scores(model.version_dir, batch)
        np.testing.assert_allclose(result.as_numpy("score"), expected, rtol=0, atol=1e-6)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, (tmp_path / "serve.log").read_text()
