"""pyimgano-serve: a real server process on loopback over a model repository built from the edge bundle,
driven by the real tritonclient (HTTP). Scores are compared with the real pyimgano-infer on the same files."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from pyimgano.runtime.images import read_rgb

pytestmark = pytest.mark.edge

TOKEN = "line-7-token"


def auth() -> dict:
    # A new dict per call: tritonclient's infer() writes Inference-Header-Content-Length into the headers it
    # is given, so a shared dict would carry one request's header length into the next.
    return {"Authorization": f"Bearer {TOKEN}"}

START_TIMEOUT_S = 90


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **kwargs) -> triton.InferenceServerClient:
        return triton.InferenceServerClient(self.url, **kwargs)

    def events(self, name: str) -> list[dict]:
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("event") == name]

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, headers (case-insensitive), body) of one raw HTTP request."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.headers, response.read()
        finally:
            connection.close()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("PYIMGANO_SERVE_TOKEN", "PYIMGANO_TRUSTED_KEYS")}


def start_server(repository: Path, log: Path, *flags: str) -> Server:
    """A pyimgano-serve process on a free loopback port, returned once it logs `serving`; a token or trusted
    keys in the caller's environment do not reach it (each test gives its own flags)."""
    env = clean_env()
    handle = open(log, "w")
    process = subprocess.Popen([sys.executable, "-m", "pyimgano.cli.serve", "--model-repository", str(repository),
                                "--port", "0", *flags], stdout=subprocess.DEVNULL, stderr=handle, env=env)
    handle.close()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        serving = [json.loads(line) for line in log.read_text().splitlines()
                   if line.startswith("{") and '"serving"' in line]
        if serving:
            return Server(process, serving[0]["port"], log)
        if process.poll() is not None:
            pytest.fail(f"pyimgano-serve exited {process.returncode}: {log.read_text()}")
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"pyimgano-serve did not start in {START_TIMEOUT_S} s: {log.read_text()}")


def add_version(model_folder: Path, version: int, bundle_dir: Path, nested: bool = False) -> Path:
    """The bundle's files directly in <model>/<version>/ (nested: its folder inside it), copied into a hidden
    folder first and moved in at once, as a deployment would (a poll never sees half a version)."""
    staging = model_folder / f".staging-{version}"
    shutil.copytree(bundle_dir, staging / bundle_dir.name if nested else staging)
    target = model_folder / str(version)
    os.replace(staging, target)
    return target


def wait_for(condition, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def images(edge_fixture, tmp_path_factory) -> dict[str, Path]:
    """Six PNGs (good and defective) and JPEG encodings of three of them, in one folder."""
    folder = tmp_path_factory.mktemp("serve-images")
    test = edge_fixture["category_dir"] / "test"
    chosen = sorted((test / "good").glob("*.png"))[:3]
    for defect in sorted(p for p in test.iterdir() if p.is_dir() and p.name != "good"):
        chosen += sorted(defect.glob("*.png"))[:2]
    files = {}
    for index, source in enumerate(chosen[:6]):
        target = folder / f"{index}_{source.parent.name}_{source.name}"
        shutil.copy(source, target)
        files[target.name] = target
    for name in list(files)[2:5]:
        ok, encoded = cv2.imencode(".jpg", cv2.imread(str(files[name])), [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        jpeg = folder / (Path(name).stem + ".jpg")
        jpeg.write_bytes(encoded.tobytes())
        files[jpeg.name] = jpeg
    return files


@pytest.fixture(scope="module")
def reference(edge_fixture, images) -> dict[str, dict]:
    """pyimgano-infer --defects over the same files: its records by file name."""
    folder = next(iter(images.values())).parent
    out = folder.parent / "reference.jsonl"
    result = subprocess.run([sys.executable, "-m", "pyimgano.cli.infer", "--bundle", str(edge_fixture["bundle_dir"]),
                             "--input", str(folder), "--save-jsonl", str(out), "--defects", "--device", "cpu"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    records = {Path(r["input"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(records) == set(images)
    # The chosen defect images include anomalous ones, so the defect outputs are exercised.
    assert any(r["label"] == 1 and r["defects"]["regions"] for r in records.values())
    return records


TILING = {"tile_size": 128, "stride": 96, "score_reduce": "topk_mean", "score_topk": 0.3, "map_reduce": "hann"}


@pytest.fixture(scope="module")
def tiled(edge_fixture, images, tmp_path_factory) -> dict:
    """The bundle with tiling in its manifest (the manifest is not checksummed; its files are unchanged), two
    320x240 images (the maps of a tiling bundle are at the image's size), and pyimgano-infer's records."""
    root = tmp_path_factory.mktemp("tiled")
    bundle = root / edge_fixture["bundle_dir"].name
    shutil.copytree(edge_fixture["bundle_dir"], bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["tiling"] = TILING
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    folder = root / "images"
    folder.mkdir()
    for name in [n for n in sorted(images) if n.endswith(".png")][2:4]:
        cv2.imwrite(str(folder / name), cv2.resize(cv2.imread(str(images[name])), (320, 240)))
    out = root / "reference.jsonl"
    result = subprocess.run([sys.executable, "-m", "pyimgano.cli.infer", "--bundle", str(bundle), "--input",
                             str(folder), "--save-jsonl", str(out), "--device", "cpu"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    records = {Path(r["input"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    return {"bundle": bundle, "files": sorted(folder.iterdir()), "reference": records}


@pytest.fixture(scope="module")
def repository(edge_fixture, tiled, tmp_path_factory) -> Path:
    """texture: version 1 as the bundle's files, every version served (pyimgano.json), and a Triton
    config.pbtxt (ignored); zipped: version 1 holding the .zip; tampered: version 1 with a byte of model.onnx
    changed; misconfigured: a good version under a pyimgano.json with a misspelt policy; tiled: the bundle
    with tiling; rolling: version 1 under the default policy (latest:1)."""
    root = tmp_path_factory.mktemp("repository")
    bundle = edge_fixture["bundle_dir"]
    (root / "texture").mkdir()
    add_version(root / "texture", 1, bundle)
    (root / "texture" / "pyimgano.json").write_text(json.dumps({"version_policy": {"all": {}}}))
    (root / "texture" / "config.pbtxt").write_text('name: "texture"\nplatform: "onnxruntime_onnx"\n')
    (root / "tiled").mkdir()
    add_version(root / "tiled", 1, tiled["bundle"])
    (root / "rolling").mkdir()
    add_version(root / "rolling", 1, bundle)
    (root / "misconfigured").mkdir()
    add_version(root / "misconfigured", 1, bundle)
    (root / "misconfigured" / "pyimgano.json").write_text(json.dumps({"version_policy": {"lates": {}}}))
    (root / "zipped" / "1").mkdir(parents=True)
    shutil.copy(edge_fixture["archive"], root / "zipped" / "1")
    (root / "tampered").mkdir()
    onnx = add_version(root / "tampered", 1, bundle) / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    return root


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory):
    token_file = tmp_path_factory.mktemp("secrets") / "token"
    token_file.write_text(TOKEN + "\n")
    log = tmp_path_factory.mktemp("logs") / "serve.log"
    # A batch waits up to 30 ms for requests to join it, at most 4 requests wait: batching and overload show.
    served = start_server(repository, log, "--token-file", str(token_file), "--poll-interval-s", "0.2",
                          "--max-batch-size", "4", "--max-queue-delay-ms", "30", "--max-queue", "4",
                          "--max-request-bytes", str(4 * 2**20), "--max-image-pixels", str(1_000_000),
                          "--device", "cpu", "--threads", "1")
    yield served
    assert served.stop() == 0, served.log.read_text()


def rgb_batch(paths: list[Path]) -> np.ndarray:
    return np.stack([read_rgb(path) for path in paths])


def uint8_input(batch: np.ndarray, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("images", list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    return tensor


def bytes_input(paths: list[Path], binary: bool = True) -> triton.InferInput:
    raw = [path.read_bytes() for path in paths]
    data = np.array(raw if binary else [base64.b64encode(item) for item in raw], dtype=object)
    tensor = triton.InferInput("image_bytes", [len(paths)], "BYTES")
    tensor.set_data_from_numpy(data, binary_data=binary)
    return tensor


def outputs(*names: str, binary: bool = True) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(name, binary_data=binary) for name in names]


def assert_matches(result, names: list[str], reference: dict[str, dict]) -> None:
    scores, labels = result.as_numpy("score"), result.as_numpy("label")
    assert scores.dtype == np.float32 and labels.dtype == np.int32
    expected_scores = np.array([reference[name]["score"] for name in names])
    np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=1e-6)
    assert labels.tolist() == [reference[name]["label"] for name in names]


# ---------------------------------------------------------------------------------------------- tests
def test_health_metadata_and_token(server, edge_fixture):
    client = server.client()
    # Health is open to load balancers; not ready while a model (tampered) has no ready version.
    assert client.is_server_live()
    status, _, body = server.request("GET", "/v2/health/ready")
    assert status == 503 and "tampered" not in json.loads(body)["error"]  # reasons only with the token
    status, _, body = server.request("GET", "/v2/health/ready", headers=auth())
    assert status == 503 and "'tampered' has no ready version" in json.loads(body)["error"]
    # Everything else needs the token.
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("texture")
    assert info.value.status() == "401" and "bearer token" in info.value.message()
    status, _, _ = server.request("GET", "/v2/models/texture", headers={"Authorization": "Bearer wrong"})
    assert status == 401
    metadata = client.get_server_metadata(headers=auth())
    assert metadata["name"] == "pyimgano-serve" and "binary_tensor_data" in metadata["extensions"]
    model = client.get_model_metadata("texture", headers=auth())
    manifest = json.loads((edge_fixture["bundle_dir"] / "manifest.json").read_text())
    assert model["name"] == "texture" and model["platform"] == "pyimgano_onnx" and model["versions"] == ["1"]
    assert {t["name"]: (t["datatype"], t["shape"]) for t in model["inputs"]} == {
        manifest["onnx"]["input"]: ("UINT8", [-1, -1, -1, 3]), "image_bytes": ("BYTES", [-1])}
    assert {t["name"]: t["datatype"] for t in model["outputs"]} == {
        "score": "FP32", "label": "INT32", "anomaly_map": "FP32", "defects": "BYTES"}
    assert model["parameters"]["image_threshold"] == manifest["thresholds"]["image"]["value"]
    assert client.is_model_ready("texture", headers=auth())
    assert client.is_model_ready("zipped", "1", headers=auth())


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_raw_uint8_scores_equal_pyimgano_infer(server, images, reference, binary):
    # In JSON, a 256x256 image is 196,608 numbers: two of them stay under --max-request-bytes.
    names = [name for name in images if name.endswith(".png")][: None if binary else 2]
    result = server.client().infer("texture", [uint8_input(rgb_batch([images[n] for n in names]), binary)],
                                   outputs=outputs("score", "label", binary=binary), headers=auth())
    assert result.get_response()["model_version"] == "1"
    assert_matches(result, names, reference)


def test_encoded_png_and_jpeg_scores_equal_pyimgano_infer(server, images, reference):
    client = server.client()
    names = sorted(images)  # PNGs and JPEGs in one request, each decoded on the server
    result = client.infer("zipped", [bytes_input([images[n] for n in names])], headers=auth())
    assert_matches(result, names, reference)
    # A gzip-compressed request body (tritonclient's request_compression_algorithm).
    result = client.infer("zipped", [bytes_input([images[n] for n in names])], headers=auth(),
                          request_compression_algorithm="gzip")
    assert_matches(result, names, reference)
    jpegs = [name for name in names if name.endswith(".jpg")]
    # JSON mode: encoded images travel as base64 strings.
    result = client.infer("texture", [bytes_input([images[n] for n in jpegs], binary=False)],
                          outputs=outputs("score", "label", binary=False), headers=auth())
    assert_matches(result, jpegs, reference)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_anomaly_map_and_defects_as_pyimgano_infer(server, images, reference, binary):
    names = [name for name in images if name.endswith(".png")]
    client = server.client()
    # Asked through parameters: score and label, plus the map and the regions.
    result = client.infer("texture", [bytes_input([images[n] for n in names])], headers=auth(),
                          parameters={"anomaly_map": True, "defects": True} if binary else None,
                          outputs=None if binary else outputs("score", "label", "anomaly_map", "defects", binary=False))
    assert_matches(result, names, reference)
    maps = result.as_numpy("anomaly_map")
    assert maps.dtype == np.float32 and maps.shape == (len(names), 256, 256)
    defects = [json.loads(item) for item in result.as_numpy("defects")]
    for name, anomaly_map, found in zip(names, maps, defects):
        record = reference[name]
        assert abs(float(anomaly_map.max()) - record["map"]["max"]) <= 1e-6
        assert abs(float(anomaly_map.mean()) - record["map"]["mean"]) <= 1e-6
        assert found["regions"] == record["defects"]["regions"]
        assert found["located"] == record["defects"]["located"]
        assert found["pixel_threshold"] == record["defects"]["pixel_threshold"]


def test_tiling_bundle_scores_and_maps_equal_pyimgano_infer(server, tiled):
    client = server.client()
    names = [path.name for path in tiled["files"]]
    raw = client.infer("tiled", [uint8_input(rgb_batch(tiled["files"]), True)], headers=auth(),
                       parameters={"anomaly_map": True})
    encoded = client.infer("tiled", [bytes_input(tiled["files"])], headers=auth(), parameters={"anomaly_map": True})
    assert client.get_model_metadata("tiled", headers=auth())["parameters"]["tiling"] == TILING
    for result in (raw, encoded):
        assert_matches(result, names, tiled["reference"])
        maps = result.as_numpy("anomaly_map")
        assert maps.shape == (2, 240, 320)  # the images' own size, blended from the tiles
        for name, anomaly_map in zip(names, maps):
            assert tiled["reference"][name]["map"]["shape"] == [240, 320]
            assert abs(float(anomaly_map.mean()) - tiled["reference"][name]["map"]["mean"]) <= 1e-6


def test_bad_requests_are_4xx_and_the_server_stays_up(server, images, reference):
    client = server.client()
    png = images[sorted(n for n in images if n.endswith(".png"))[0]]

    def refused(model, tensor, **kwargs) -> tuple[str, str]:
        with pytest.raises(InferenceServerException) as info:
            client.infer(model, [tensor], headers=auth(), **kwargs)
        return info.value.status(), info.value.message()

    wrong_shape = triton.InferInput("images", [1, 256, 256, 4], "UINT8")
    wrong_shape.set_data_from_numpy(np.zeros((1, 256, 256, 4), np.uint8))
    status, message = refused("texture", wrong_shape)
    assert status == "400" and "[B,H,W,3]" in message
    wrong_dtype = triton.InferInput("images", [1, 8, 8, 3], "FP32")
    wrong_dtype.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.float32))
    status, message = refused("texture", wrong_dtype)
    assert status == "400" and "must be UINT8" in message
    not_an_image = triton.InferInput("image_bytes", [1], "BYTES")
    not_an_image.set_data_from_numpy(np.array([b"this is not a picture"], dtype=object))
    status, message = refused("texture", not_an_image)
    assert status == "400" and "image_bytes[0]" in message and "not a decodable image" in message
    good = bytes_input([png])
    assert refused("nonexistent", good)[0] == "404"
    status, message = refused("texture", good, model_version="7")
    assert status == "404" and "no version 7" in message
    status, message = refused("texture", good, parameters={"anomaly_maps": True})
    assert status == "400" and "did you mean 'anomaly_map'" in message
    assert refused("texture", good, outputs=outputs("heatmap"))[0] == "400"
    # Malformed JSON and an oversized body, sent raw.
    status, _, body = server.request("POST", "/v2/models/texture/infer", b'{"inputs": [', auth())
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]
    big = np.zeros((1, 1024, 1400, 3), np.uint8)  # 4.3 MB > --max-request-bytes 4 MiB
    status, message = refused("texture", uint8_input(big, True))
    assert status == "413" and "--max-request-bytes" in message
    ok, huge = cv2.imencode(".png", np.zeros((1000, 1200, 3), np.uint8))  # 1.2 MP > --max-image-pixels 1 MP
    not_too_big = triton.InferInput("image_bytes", [1], "BYTES")
    not_too_big.set_data_from_numpy(np.array([huge.tobytes()], dtype=object))
    status, message = refused("texture", not_too_big)
    assert status == "413" and "1200x1000 pixels exceeds the limit of 1,000,000" in message
    # A request that cannot be answered within its timeout (tritonclient's, in microseconds): 504.
    many = [images[n] for n in sorted(images) if n.endswith(".jpg")] * 8
    status, message = refused("texture", bytes_input(many), timeout=1000)
    assert status == "504" and "no result within 0.001 s" in message
    # Still up, and still right.
    assert client.is_server_live()
    result = client.infer("texture", [good], headers=auth())
    assert_matches(result, [png.name], reference)


def test_tampered_bundle_is_refused_and_says_why(server, images, reference):
    client = server.client()
    assert not client.is_model_ready("tampered", headers=auth())
    status, _, body = server.request("GET", "/v2/models/tampered/versions/1/ready", headers=auth())
    answer = json.loads(body)
    assert status == 503 and answer["ready"] is False
    assert "model.onnx" in answer["error"] and "sha256" in answer["error"]
    [entry] = [e for e in client.get_model_repository_index(headers=auth()) if e["name"] == "tampered"]
    assert entry["state"] == "UNAVAILABLE" and "model.onnx" in entry["reason"]
    [logged] = [e for e in server.events("model_refused") if e["model"] == "tampered"]
    assert "sha256" in logged["reason"]
    # A policy file that does not parse makes its model unavailable rather than guessing a policy.
    [entry] = [e for e in client.get_model_repository_index(headers=auth()) if e["name"] == "misconfigured"]
    assert entry["state"] == "UNAVAILABLE" and "pyimgano.json" in entry["reason"] and "'lates'" in entry["reason"]
    assert not client.is_model_ready("misconfigured", headers=auth())
    assert any("config.pbtxt ignored" in e["note"] for e in server.events("repository_note") if e["model"] == "texture")
    with pytest.raises(InferenceServerException) as info:
        client.infer("tampered", [bytes_input([images[next(iter(images))]])], headers=auth())
    assert info.value.status() == "503" and "model.onnx" in info.value.message()
    # The good models in the same repository keep serving.
    name = next(iter(images))
    assert_matches(client.infer("zipped", [bytes_input([images[name]])], headers=auth()), [name], reference)


def test_version_added_and_removed_while_serving(server, repository, edge_fixture, images, reference):
    client = server.client()
    folder = add_version(repository / "texture", 2, edge_fixture["bundle_dir"], nested=True)
    wait_for(lambda: client.is_model_ready("texture", "2", headers=auth()), "version 2 to become ready")
    assert client.get_model_metadata("texture", headers=auth())["versions"] == ["1", "2"]
    name = next(iter(images))
    result = client.infer("texture", [bytes_input([images[name]])], headers=auth())
    assert result.get_response()["model_version"] == "2"  # the highest ready version by default
    assert_matches(result, [name], reference)

    # A long request on version 2 is in flight when its folder goes: it finishes on version 2.
    many = [images[n] for n in sorted(images) if n.endswith(".jpg")] * 12
    outcome = {}

    def long_request() -> None:
        # Closed in the thread that made it: a gevent client cannot be closed from another thread.
        with server.client() as own:
            outcome["result"] = own.infer("texture", [bytes_input(many)], model_version="2", headers=auth())

    worker = threading.Thread(target=long_request)
    worker.start()
    time.sleep(0.15)
    shutil.rmtree(folder)
    worker.join(timeout=60)
    assert outcome["result"].get_response()["model_version"] == "2"
    assert_matches(outcome["result"], [p.name for p in many], reference)

    def removed() -> bool:
        try:
            client.get_model_metadata("texture", "2", headers=auth())
        except InferenceServerException as exc:
            return exc.status() == "404"
        return False

    wait_for(removed, "version 2 to be gone")
    [unloaded] = [e for e in server.events("model_unloaded") if e["model"] == "texture" and e["version"] == "2"]
    assert unloaded["in_flight"] >= 1  # the long request held it
    assert client.get_model_metadata("texture", headers=auth())["versions"] == ["1"]


def test_new_version_under_latest_1_takes_over_without_a_gap(server, repository, edge_fixture, images, reference):
    name = next(iter(images))
    answered, refused, stop = [], [], threading.Event()

    def keep_asking() -> None:
        with server.client() as own:  # closed in this thread, as gevent needs
            while not stop.is_set():
                try:
                    result = own.infer("rolling", [bytes_input([images[name]])], headers=auth())
                    answered.append((result.get_response()["model_version"], float(result.as_numpy("score")[0])))
                except InferenceServerException as exc:
                    refused.append(exc.status())

    worker = threading.Thread(target=keep_asking)
    worker.start()
    try:
        wait_for(lambda: len(answered) >= 3, "the first answers from version 1")
        add_version(repository / "rolling", 2, edge_fixture["bundle_dir"])
        wait_for(lambda: answered[-1][0] == "2", "version 2 to answer")

        def version_1_gone() -> bool:
            try:
                server.client().get_model_metadata("rolling", "1", headers=auth())
            except InferenceServerException as exc:
                return exc.status() == "404"
            return False

        wait_for(version_1_gone, "version 1 to be retired")
    finally:
        stop.set()
        worker.join(timeout=60)
    assert refused == []  # not one request failed during the switch
    versions = [version for version, _ in answered]
    assert versions[0] == "1" and versions[-1] == "2" and "1" not in versions[versions.index("2"):]
    assert all(abs(score - reference[name]["score"]) <= 1e-6 for _, score in answered)


def test_overload_is_503_with_retry_after_while_live(server, images):
    paths = [images[n] for n in sorted(images)]
    body, json_size = triton.InferenceServerClient.generate_request_body([bytes_input(paths)])
    headers = {**auth(), "Inference-Header-Content-Length": str(json_size), "Content-Type": "application/octet-stream"}
    answers, live = [], []
    gate = threading.Barrier(24)

    def post() -> None:
        gate.wait()
        status, response_headers, _ = server.request("POST", "/v2/models/zipped/infer", body, headers)
        answers.append((status, response_headers.get("Retry-After")))

    workers = [threading.Thread(target=post) for _ in range(24)]
    for worker in workers:
        worker.start()
    time.sleep(0.1)
    live.append(server.request("GET", "/v2/health/live")[0])
    for worker in workers:
        worker.join(timeout=120)
    statuses = [status for status, _ in answers]
    assert len(statuses) == 24 and set(statuses) <= {200, 503}
    assert statuses.count(503) >= 1 and statuses.count(200) >= 3
    assert all(retry and int(retry) >= 1 for status, retry in answers if status == 503)
    assert live == [200]
    assert server.client().is_server_live()


def scrape(server) -> dict:
    """The server's /metrics as {(sample name, sorted labels): value}."""
    status, _, body = server.request("GET", "/metrics", headers=auth())
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_concurrent_requests_share_a_batch_and_get_their_own_scores(server, images, reference):
    names = sorted(images)[:4]
    batches = ("pyimgano_serve_batch_size_count", (("model", "zipped"), ("version", "1")))
    batched_images = ("pyimgano_serve_batch_size_sum", (("model", "zipped"), ("version", "1")))
    before = scrape(server)
    results, gate = {}, threading.Barrier(len(names))

    def request(name: str) -> None:
        with server.client() as own:  # closed in this thread, as gevent needs
            for round_ in range(3):
                gate.wait()
                results[(name, round_)] = own.infer("zipped", [bytes_input([images[name]])], headers=auth())

    workers = [threading.Thread(target=request, args=(name,)) for name in names]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert len(results) == 3 * len(names)
    for (name, _), result in results.items():
        assert_matches(result, [name], reference)  # each request got its own image's slice of the batch
    after = scrape(server)
    count = after[batches] - before.get(batches, 0)
    assert after[batched_images] - before.get(batched_images, 0) == 3 * len(names)
    assert count < 3 * len(names)  # fewer session batches than requests: requests were scored together


def test_metrics_count_requests_by_model_version_and_status(server, images):
    ok = ("pyimgano_serve_requests_total", (("model", "zipped"), ("status", "200"), ("version", "1")))
    missing = ("pyimgano_serve_requests_total", (("model", ""), ("status", "404"), ("version", "")))
    images_scored = ("pyimgano_serve_images_total", (("model", "zipped"), ("version", "1")))
    before = scrape(server)
    client = server.client()
    paths = [images[n] for n in sorted(images)[:3]]
    for _ in range(2):
        client.infer("zipped", [bytes_input(paths)], headers=auth())
    with pytest.raises(InferenceServerException):
        client.infer("no-such-model", [bytes_input(paths)], headers=auth())
    after = scrape(server)
    assert after[ok] - before.get(ok, 0) == 2
    assert after[missing] - before.get(missing, 0) == 1
    assert after[images_scored] - before.get(images_scored, 0) == 6
    assert after[("pyimgano_serve_model_ready", (("model", "tampered"), ("version", "1")))] == 0
    assert after[("pyimgano_serve_batch_size_count", (("model", "zipped"), ("version", "1")))] >= 2
    assert server.request("GET", "/metrics")[0] == 401


def test_sigterm_drains_requests_in_flight_and_exits_0(edge_fixture, images, reference, tmp_path):
    root = tmp_path / "repository"
    (root / "line").mkdir(parents=True)
    add_version(root / "line", 1, edge_fixture["bundle_dir"])
    server = start_server(root, tmp_path / "serve.log", "--max-batch-size", "1", "--device", "cpu")
    names = sorted(images) * 3  # about 0.3 s of scoring per request at max batch 1
    results, errors = [], []

    def request() -> None:
        with server.client() as client:  # closed in this thread, as gevent needs
            try:
                results.append(client.infer("line", [bytes_input([images[n] for n in names])]))
            except InferenceServerException as exc:  # recorded, so the assertion below names it
                errors.append(exc)

    workers = [threading.Thread(target=request) for _ in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(0.3)
    server.process.send_signal(signal.SIGTERM)
    unfinished_at_signal = len(workers) - len(results)
    for worker in workers:
        worker.join(timeout=120)
    assert server.process.wait(timeout=60) == 0, server.log.read_text()
    assert unfinished_at_signal >= 2  # the signal came while requests were in flight
    assert not errors and len(results) == len(workers)
    for result in results:
        assert_matches(result, names, reference)
    assert server.events("exited")[-1]["signal"] == "SIGTERM"
    # The whole log is JSON lines: the server's events and uvicorn's messages.
    lines = [json.loads(line) for line in server.log.read_text().splitlines()]
    assert all(isinstance(line, dict) and {"time", "level", "message"} <= set(line) for line in lines)
    assert [e["event"] for e in lines if e.get("event") in ("model_loaded", "model_closed", "stopped")] == [
        "model_loaded", "model_closed", "stopped"]


def test_port_in_use_is_exit_2(server, repository, tmp_path):
    result = subprocess.run([sys.executable, "-m", "pyimgano.cli.serve", "--model-repository", str(repository),
                             "--port", str(server.port)], capture_output=True, text=True, timeout=120,
                            env=clean_env())
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: --host 127.0.0.1 --port {server.port}: cannot "
                                                             "listen there")


def test_trusted_keys_serve_only_signed_bundles(edge_fixture, images, reference, tmp_path):
    from pyimgano.runtime.bundle import sign_bundle
    from pyimgano.runtime.signing import generate_key_pair, load_private_key

    pair = generate_key_pair(tmp_path / "keys" / "line")
    root = tmp_path / "repository"
    for model in ("signed", "unsigned"):
        (root / model).mkdir(parents=True)
        add_version(root / model, 1, edge_fixture["bundle_dir"])
    sign_bundle(root / "signed" / "1", load_private_key(pair.private))
    server = start_server(root, tmp_path / "serve.log", "--trusted-keys", str(pair.public), "--no-strict-readiness",
                          "--poll-interval-s", "0", "--device", "cpu")
    try:
        client = server.client()
        assert client.is_server_ready()  # --no-strict-readiness: one ready model is enough
        assert client.is_model_ready("signed")
        name = next(iter(images))
        assert_matches(client.infer("signed", [bytes_input([images[name]])]), [name], reference)
        assert pair.key_id in client.get_model_metadata("signed")["parameters"]["origin"]
        status, _, body = server.request("GET", "/v2/models/unsigned/ready")
        assert status == 503 and "unsigned" in json.loads(body)["error"]
    finally:
        assert server.stop() == 0
