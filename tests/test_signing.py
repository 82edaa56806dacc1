"""Signed bundles (Ed25519): trusted keys open only what one of them signed, and no bundle opens with a file
its manifest does not list.

Each case is the probe's or the issue's on the real edge bundle, through the real console scripts: a model
swapped together with its sha256 in the manifest (an "always normal" graph ran with rc 0), an unlisted ONNX
external-data file, and the documented re-sign after a threshold is edited by hand.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pyimgano.runtime.bundle import MANIFEST_NAME, sha256_file
from pyimgano.runtime.exit_codes import ExitCode
from pyimgano.runtime.signing import SIGNATURE_NAME

INFER = [sys.executable, "-m", "pyimgano.cli.infer"]
SIGN = [sys.executable, "-m", "pyimgano.cli.sign"]
# Runs pyimgano-infer in a process where `import cryptography` fails, as on a base install without the extra.
INFER_WITHOUT_CRYPTOGRAPHY = [sys.executable, "-c", "import sys; sys.modules['cryptography'] = None; "
                                                   "from pyimgano.cli.infer import main; main()"]


def run(command: list[str], *args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command + [str(arg) for arg in args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def summary(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stderr.strip().splitlines()[-1])


def unverified_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "origin unverified" in line]


def scores(records: Path) -> dict[str, float]:
    return {r["input"]: r["score"] for r in map(json.loads, records.read_text().splitlines())}


def key_id_of(public_key: Path) -> str:
    """The key_id from the OpenSSH line itself: the wire blob ends with the raw 32-byte key."""
    kind, blob = public_key.read_text().split()[:2]
    assert kind == "ssh-ed25519"
    return hashlib.sha256(base64.b64decode(blob)[-32:]).hexdigest()[:16]


def refused(result: subprocess.CompletedProcess, *phrases: str) -> None:
    assert result.returncode == ExitCode.BUNDLE_REFUSED, result.stderr
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("bundle refused: ")]
    for phrase in phrases:
        assert phrase in line, line


def rewrite_member(archive: Path, name: str, data: bytes) -> None:
    """The archive with member `TOP/name` replaced (or added), every other member kept."""
    members = {}
    with zipfile.ZipFile(archive) as handle:
        top = handle.namelist()[0].split("/")[0]
        for member in handle.namelist():
            members[member] = handle.read(member)
    members[f"{top}/{name}"] = data
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as handle:
        for member, content in members.items():
            handle.writestr(member, content)


def member(archive: Path, name: str) -> bytes:
    with zipfile.ZipFile(archive) as handle:
        [path] = [p for p in handle.namelist() if p.endswith("/" + name)]
        return handle.read(path)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict:
    """Two key pairs made by `pyimgano-sign keygen`, and a folder trusting only `release` (plus a file that
    is not a key, which a folder source ignores)."""
    folder = tmp_path_factory.mktemp("keys")
    made = {}
    for name in ("release", "other"):
        result = run(SIGN, "keygen", "--out", folder / name)
        assert result.returncode == 0, result.stderr
        made[name] = {"key": folder / f"{name}.key", "pub": folder / f"{name}.pub",
                      "key_id": key_id_of(folder / f"{name}.pub")}
        assert f"key_id: {made[name]['key_id']}" in result.stdout
    trusted = folder / "trusted"
    trusted.mkdir()
    shutil.copy(made["release"]["pub"], trusted / "release.pub")
    (trusted / "README.txt").write_text("public keys of the release machine\n")
    made["trusted_dir"] = trusted
    return made


@pytest.fixture(scope="module")
def images(edge_fixture, tmp_path_factory) -> Path:
    """Three good and three defect images: enough to see scores and anomalous counts, and quick."""
    folder = tmp_path_factory.mktemp("images")
    for kind in ("good", "spot"):
        for path in sorted((edge_fixture["category_dir"] / "test" / kind).glob("*.png"))[:3]:
            shutil.copy(path, folder / f"{kind}_{path.name}")
    return folder


@pytest.fixture()
def bundle_copy(edge_fixture, tmp_path) -> Path:
    target = tmp_path / edge_fixture["bundle_dir"].name
    shutil.copytree(edge_fixture["bundle_dir"], target)
    return target


@pytest.fixture()
def archive_copy(edge_fixture, tmp_path) -> Path:
    target = tmp_path / edge_fixture["archive"].name
    shutil.copy(edge_fixture["archive"], target)
    return target


def sign(bundle: Path, key: Path) -> None:
    result = run(SIGN, "sign", bundle, "--key", key)
    assert result.returncode == 0, result.stderr


@pytest.mark.edge
def test_keygen_writes_a_0600_private_key_and_refuses_to_overwrite(tmp_path):
    result = run(SIGN, "keygen", "--out", tmp_path / "line3")
    assert result.returncode == 0, result.stderr
    private, public = tmp_path / "line3.key", tmp_path / "line3.pub"
    assert private.stat().st_mode & 0o777 == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert f"key_id: {key_id_of(public)}" in result.stdout
    before = (private.read_bytes(), public.read_bytes())
    again = run(SIGN, "keygen", "--out", tmp_path / "line3")
    assert again.returncode == ExitCode.USAGE, again.stderr
    assert f"{private} exists; refusing to overwrite" in again.stderr and "Traceback" not in again.stderr
    assert (private.read_bytes(), public.read_bytes()) == before
    # Half a pair is refused too, and nothing is written beside it.
    private.unlink()
    half = run(SIGN, "keygen", "--out", tmp_path / "line3")
    assert half.returncode == ExitCode.USAGE and f"{public} exists" in half.stderr
    assert not private.exists() and public.read_bytes() == before[1]


def _always_normal_graph(path: Path, manifest: dict) -> None:
    """A graph with the bundle's input and outputs whose scores and maps are 0 for every image."""
    import onnx
    from onnx import TensorProto, helper

    height, width = manifest["input"]["height"], manifest["input"]["width"]
    nodes = [
        helper.make_node("Cast", ["images"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["pixels"], ["brightest"], axes=[3], keepdims=0),
        helper.make_node("Mul", ["brightest", "zero"], ["maps"]),
        helper.make_node("ReduceMax", ["maps"], ["scores"], axes=[1, 2], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "always_normal",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", height, width, 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["batch", height, width])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


@pytest.mark.parametrize("swap", [pytest.param("same-graph-other-bytes", marks=pytest.mark.edge), "always-normal"])
def test_a_swapped_model_with_its_sha_rewritten_opens_unverified_without_keys_and_is_refused_with_them(
        bundle_copy, images, keys, tmp_path, swap):
    """The probe's case: model.onnx replaced and its sha256 and size rewritten in the manifest, in a bundle
    signed by a trusted key. Without keys it runs (rc 0; the always-normal graph passes every part) and says
    once that its origin is unverified; with the key it is refused before any image is scored."""
    if swap == "always-normal":
        pytest.importorskip("onnx")
    sign(bundle_copy, keys["release"]["key"])
    baseline = run(INFER, "--bundle", bundle_copy, "--input", images, "--trusted-keys", keys["release"]["pub"])
    assert baseline.returncode == 0 and summary(baseline)["anomalous"] > 0, baseline.stderr
    manifest_path = bundle_copy / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    model = bundle_copy / "model.onnx"
    if swap == "always-normal":
        _always_normal_graph(model, manifest)
    else:
        # An unknown protobuf field (number 1000) after the model: another file, which ONNX Runtime still loads.
        model.write_bytes(model.read_bytes() + bytes([0xC2, 0x3E, 4]) + b"evil")
    manifest["files"]["model.onnx"] = {"sha256": sha256_file(model), "size": model.stat().st_size}
    manifest_path.write_text(json.dumps(manifest, indent=2))

    opened = run(INFER, "--bundle", bundle_copy, "--input", images)
    assert opened.returncode == 0, opened.stderr
    [warning] = unverified_warnings(opened.stderr)
    assert bundle_copy.name in warning and f"signed by key_id {keys['release']['key_id']}" in warning
    assert summary(opened)["origin"] == {"signed": True, "verified": False, "key_id": keys["release"]["key_id"]}
    if swap == "always-normal":
        assert summary(opened)["anomalous"] == 0  # the attack: every part passes, rc 0

    out = tmp_path / "records.jsonl"
    result = run(INFER, "--bundle", bundle_copy, "--input", images, "--save-jsonl", out,
                 "--trusted-keys", keys["release"]["pub"])
    refused(result, bundle_copy.name, f"key_id {keys['release']['key_id']}", "manifest changed after signing")
    assert not out.exists() or out.read_text() == ""


@pytest.mark.edge
@pytest.mark.parametrize("form, extra", [("dir", "model.onnx.data"), ("dir", "weights/extra.bin"),
                                         ("zip", "model.onnx.data")])
def test_an_unlisted_file_is_refused_even_without_keys(bundle_copy, archive_copy, images, form, extra):
    """ONNX Runtime loads external data a graph names by itself; an unlisted file would be used unchecked."""
    if form == "dir":
        target = bundle_copy
        (bundle_copy / extra).parent.mkdir(exist_ok=True)
        (bundle_copy / extra).write_bytes(b"\0" * 4096)
    else:
        target = archive_copy
        rewrite_member(archive_copy, extra, b"\0" * 4096)
    result = run(INFER, "--bundle", target, "--input", images)
    refused(result, f"{extra}: in the bundle but not listed in {MANIFEST_NAME}")


@pytest.mark.edge
def test_an_archive_with_a_member_twice_is_refused(archive_copy, images):
    """Which of two same-named members a reader takes differs between tools: what was verified need not be
    what is read."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name it is asked to write
        with zipfile.ZipFile(archive_copy, "a") as handle:
            handle.writestr(f"{archive_copy.stem}/{MANIFEST_NAME}", b"{}")
    refused(run(INFER, "--bundle", archive_copy, "--input", images), f"{MANIFEST_NAME}' appears twice")


def _unsigned(bundle: Path, keys: dict) -> None:
    pass


def _signed_by_other(bundle: Path, keys: dict) -> None:
    sign(bundle, keys["other"]["key"])


def _signature_flipped(bundle: Path, keys: dict) -> None:
    sign(bundle, keys["release"]["key"])
    record = json.loads((bundle / SIGNATURE_NAME).read_text())
    raw = bytearray(base64.b64decode(record["signature"]))
    raw[10] ^= 0x01
    record["signature"] = base64.b64encode(bytes(raw)).decode()
    (bundle / SIGNATURE_NAME).write_text(json.dumps(record))


def _signed_field_changed(bundle: Path, keys: dict) -> None:
    """The manifest edited and signature.json's manifest_sha256 rewritten to match it: the Ed25519 signature
    covers every field, so the record no longer verifies."""
    sign(bundle, keys["release"]["key"])
    manifest = bundle / MANIFEST_NAME
    manifest.write_text(manifest.read_text().replace('"version": "1"', '"version": "1" ', 1))
    record = json.loads((bundle / SIGNATURE_NAME).read_text())
    record["manifest_sha256"] = hashlib.sha256(manifest.read_bytes()).hexdigest()
    (bundle / SIGNATURE_NAME).write_text(json.dumps(record))


def _signature_truncated(bundle: Path, keys: dict) -> None:
    sign(bundle, keys["release"]["key"])
    data = (bundle / SIGNATURE_NAME).read_bytes()
    (bundle / SIGNATURE_NAME).write_bytes(data[: len(data) // 2])


@pytest.mark.edge
@pytest.mark.parametrize("tamper, phrases", [
    (_unsigned, ["unsigned (no signature.json)", "{release}"]),
    (_signed_by_other, ["signed by key_id {other}, which is not one of the trusted keys", "{release}"]),
    (_signature_flipped, ["the signature by key_id {release} does not verify"]),
    (_signed_field_changed, ["the signature by key_id {release} does not verify"]),
    (_signature_truncated, [f"{SIGNATURE_NAME}: not valid JSON"]),
], ids=["unsigned", "other-key", "signature-corrupted", "signed-field-changed", "signature-truncated"])
def test_trusted_keys_refuse_what_a_trusted_key_did_not_sign(bundle_copy, images, keys, tmp_path, tamper,
                                                              phrases):
    tamper(bundle_copy, keys)
    phrases = [bundle_copy.name] + [p.format(release=keys["release"]["key_id"], other=keys["other"]["key_id"])
                                    for p in phrases]
    out = tmp_path / "records.jsonl"
    result = run(INFER, "--bundle", bundle_copy, "--input", images,
                 "--save-jsonl", out, "--trusted-keys", keys["trusted_dir"])
    refused(result, *phrases)
    assert not out.exists() or out.read_text() == ""
    refused(run(SIGN, "verify", bundle_copy, "--trusted-keys", keys["release"]["pub"]), *phrases)


@pytest.mark.edge
def test_a_signed_bundle_with_the_right_key_scores_as_the_unsigned_one_and_says_by_which_key(
        bundle_copy, archive_copy, edge_fixture, images, keys, tmp_path):
    sign(bundle_copy, keys["release"]["key"])
    sign(archive_copy, keys["release"]["key"])
    release = keys["release"]["key_id"]
    verified = run(SIGN, "verify", archive_copy, "--trusted-keys", keys["release"]["pub"])
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.count("\n") == 1 and f"signed by trusted key_id {release}" in verified.stdout

    unsigned = run(INFER, "--bundle", edge_fixture["bundle_dir"], "--input", images, "--save-jsonl",
                   tmp_path / "unsigned.jsonl")
    assert unsigned.returncode == 0, unsigned.stderr
    [warning] = unverified_warnings(unsigned.stderr)
    assert "unsigned (no signature.json)" in warning
    assert summary(unsigned)["origin"] == {"signed": False, "verified": False, "key_id": None}

    by_flag = run(INFER, "--bundle", bundle_copy, "--input", images, "--save-jsonl", tmp_path / "dir.jsonl",
                  "--trusted-keys", keys["release"]["pub"], "--summary-json", tmp_path / "summary.json")
    # The environment variable, and a folder of *.pub files, for the archive.
    by_env = run(INFER, "--bundle", archive_copy, "--input", images, "--save-jsonl", tmp_path / "zip.jsonl",
                 env={"PYIMGANO_TRUSTED_KEYS": str(keys["trusted_dir"])})
    for result in (by_flag, by_env):
        assert result.returncode == 0, result.stderr
        assert unverified_warnings(result.stderr) == [] and "warning" not in result.stderr
        assert summary(result)["origin"] == {"signed": True, "verified": True, "key_id": release}
    assert json.loads((tmp_path / "summary.json").read_text())["origin"]["key_id"] == release
    reference = scores(tmp_path / "unsigned.jsonl")
    assert len(reference) == summary(unsigned)["images"] > 0
    assert scores(tmp_path / "dir.jsonl") == reference and scores(tmp_path / "zip.jsonl") == reference


@pytest.mark.edge
@pytest.mark.parametrize("form", ["dir", "zip"])
def test_a_threshold_edited_by_hand_is_refused_until_signed_again(bundle_copy, archive_copy, images, keys,
                                                                  form):
    """The documented flow: the manifest's `files` do not cover manifest.json, so an engineer may edit a
    threshold, but trusted keys refuse it until `pyimgano-sign sign` signs the edited manifest."""
    target = bundle_copy if form == "dir" else archive_copy
    sign(target, keys["release"]["key"])
    trusted = keys["release"]["pub"]
    before = run(INFER, "--bundle", target, "--input", images, "--trusted-keys", trusted)
    assert before.returncode == 0 and summary(before)["anomalous"] > 0, before.stderr

    manifest = json.loads((bundle_copy / MANIFEST_NAME).read_text() if form == "dir" else member(target, MANIFEST_NAME))
    manifest["thresholds"]["image"]["value"] = 1e6  # no part is anomalous any more
    edited = json.dumps(manifest, indent=2).encode()
    if form == "dir":
        (bundle_copy / MANIFEST_NAME).write_bytes(edited)
    else:
        rewrite_member(target, MANIFEST_NAME, edited)
    release = keys["release"]["key_id"]
    refused(run(INFER, "--bundle", target, "--input", images, "--trusted-keys", trusted),
            target.name, f"key_id {release}", "manifest changed after signing", "pyimgano-sign sign")
    refused(run(SIGN, "verify", target, "--trusted-keys", trusted), "manifest changed after signing")

    if form == "zip":
        names_before = sorted(zipfile.ZipFile(target).namelist())
        model_before = member(target, "model.onnx")
    sign(target, keys["release"]["key"])
    if form == "zip":
        # Rewritten in place: the same members, signature.json once, the others byte for byte.
        assert sorted(zipfile.ZipFile(target).namelist()) == names_before
        assert member(target, "model.onnx") == model_before and member(target, MANIFEST_NAME) == edited
        assert not target.with_name(target.name + ".tmp").exists()
    signature = json.loads((bundle_copy / SIGNATURE_NAME).read_text() if form == "dir"
                           else member(target, SIGNATURE_NAME))
    assert signature["manifest_sha256"] == hashlib.sha256(edited).hexdigest() and signature["key_id"] == release
    after = run(INFER, "--bundle", target, "--input", images, "--trusted-keys", trusted)
    assert after.returncode == 0, after.stderr
    assert summary(after)["anomalous"] == 0 and summary(after)["origin"]["verified"] is True


@pytest.mark.edge
def test_without_the_signing_extra_keys_are_refused_naming_it_and_bundles_still_open(bundle_copy, images,
                                                                                   keys):
    sign(bundle_copy, keys["release"]["key"])
    with_keys = run(INFER_WITHOUT_CRYPTOGRAPHY, "--bundle", bundle_copy, "--input", images,
                    "--trusted-keys", keys["release"]["pub"])
    assert with_keys.returncode == ExitCode.USAGE, with_keys.stderr
    assert "pip install 'pyimgano[signing]'" in with_keys.stderr and "Traceback" not in with_keys.stderr
    without = run(INFER_WITHOUT_CRYPTOGRAPHY, "--bundle", bundle_copy, "--input", images)
    assert without.returncode == 0, without.stderr
    assert len(unverified_warnings(without.stderr)) == 1


@pytest.mark.edge
def test_a_private_key_given_as_trusted_keys_is_a_usage_error(bundle_copy, images, keys):
    result = run(INFER, "--bundle", bundle_copy, "--input", images,
                 "--trusted-keys", keys["release"]["key"])
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert f"{keys['release']['key']}:1: a private key" in result.stderr and "Traceback" not in result.stderr


def test_pyimgano_export_signs_the_bundle_and_its_archive(edge_fixture, keys, tmp_path):
    """`pyimgano-export --sign-key`: both the folder and the .zip verify (the signature is in the archive)."""
    run_dir = edge_fixture["bundle_dir"].parents[1] / "run"
    if not (run_dir / "report.json").is_file() or "files" not in json.loads((run_dir / "report.json").read_text()):
        pytest.skip(f"no current workbench run beside the edge bundle ({run_dir})")
    export = Path(sys.executable).parent / "pyimgano-export"
    result = run([str(export)], "--from-run", run_dir, "--out", tmp_path, "--sign-key", keys["release"]["key"])
    assert result.returncode == 0, result.stderr
    assert f"signed by key_id {keys['release']['key_id']}" in result.stdout
    [archive] = tmp_path.glob("*.zip")
    for bundle in (archive, archive.with_suffix("")):
        verified = run(SIGN, "verify", bundle, "--trusted-keys", keys["release"]["pub"])
        assert verified.returncode == 0 and keys["release"]["key_id"] in verified.stdout, verified.stderr
