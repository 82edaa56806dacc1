"""Property tests (hypothesis) for what must fail closed: the manifest and bundle, the workbench config, image
decoding, and the tiling arithmetic.

Each parser is fed hypothesis-drawn mutations of a real, valid input (the golden 1.0 manifest, the edge fixture's
1.1 bundle, the recipes' configs, images OpenCV wrote) and must either give a typed, usable result or raise its own
error naming what it refused; any other exception is a bug. Every test is bounded (max_examples, no deadline) and
derandomized without an example database, so CI runs the same examples on every run.

Marked `edge`: nothing here needs torch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import types
import typing
from pathlib import Path
from typing import Union

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, currently_in_test_context, event, example, given, settings
from hypothesis import strategies as st

from pyimgano.config import CHOICES, ConfigError, WorkbenchConfig, parse_config, to_json
from pyimgano.models.backbones import BACKBONES
from pyimgano.models.patchcore_spec import PATCHCORE_PRESETS
from pyimgano.models.registry import get_model
from pyimgano.recipes import RECIPES
from pyimgano.runtime.bundle import BundleError, open_bundle, read_manifest
from pyimgano.runtime.context import ContextError, ScoringContext
from pyimgano.runtime.defects import MASK_FORMATS, REGION_SORT_KEYS, SMOOTH_MODES, THRESHOLD_STRATEGIES
from pyimgano.runtime.images import ImageLimits, ImageReadError, header_size, read_rgb
from pyimgano.runtime.manifest import MANIFEST_NAME, Manifest, ManifestError, manifest_to_json, parse_manifest
from pyimgano.runtime.postprocess import MAX_GAUSSIAN_SIGMA, NORMALIZE_METHODS
from pyimgano.runtime.tiling import MAP_REDUCE, SCORE_REDUCE, TilingConfig, blend_maps, make_grid, tile_count

pytestmark = pytest.mark.edge

GOLDEN = Path(__file__).parent / "golden" / "manifest-1.0-patchcore.json"
DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "defects"

# The same examples on every run and machine: derived from each test itself, none replayed from a database
# (which would also write .hypothesis/ into the checkout). A test's examples share its one temporary folder
# (each rewrites the files it uses), hence no function-scoped-fixture health check.
BOUNDED = settings(
    derandomize=True,
    database=None,
    deadline=None,
    # No "explain" phase: tracing every line of a failing example through numpy and OpenCV takes minutes.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Bugs the properties found, now fixed: the explicit example that found each runs first.
PINNED = settings(BOUNDED, max_examples=10, phases=[Phase.explicit, Phase.generate], report_multiple_bugs=False)


# --------------------------------------------------------------------------- JSON trees and their mutations

def paths_of(tree, prefix: tuple = ()) -> list[tuple]:
    """Every location in a JSON tree (the root is ()), as tuples of dict keys and list indices."""
    found = [prefix]
    if isinstance(tree, dict):
        for key, value in tree.items():
            found += paths_of(value, prefix + (key,))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            found += paths_of(value, prefix + (index,))
    return found


def get_at(tree, path: tuple):
    for step in path:
        tree = tree[step]
    return tree


def set_at(tree, path: tuple, value):
    """The tree with `value` at `path` (the root replaced when the path is empty)."""
    if not path:
        return value
    get_at(tree, path[:-1])[path[-1]] = value
    return tree


def dotted(path: tuple) -> str:
    """A path as the parsers write it: keys joined by dots, list indices in brackets."""
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text


def schema_paths(cls: type, prefix: str = "") -> set[str]:
    """Every key path a typed record (recursively) declares, dotted."""
    found = set()
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        where = f"{prefix}.{spec.name}" if prefix else spec.name
        found.add(where)
        tp = hints[spec.name]
        options = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
        for option in options:
            if dataclasses.is_dataclass(option):
                found |= schema_paths(option, where)
    return found


# Numbers a hand-edited or hostile file may hold: non-finite (json writes and reads NaN/Infinity), beyond
# float range as an integer, at the edges of int64, subnormal, signed zero.
SPECIAL_NUMBERS = (math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -0.0, 0, -1, 2**31, 2**63, -(2**63) - 1,
                   10**400, -(10**400))
special_numbers = st.sampled_from(SPECIAL_NUMBERS)
# Every name a string key may validly take somewhere, so a redrawn string is often another valid choice.
KNOWN_NAMES = sorted({*THRESHOLD_STRATEGIES, *MASK_FORMATS, *REGION_SORT_KEYS, *SMOOTH_MODES, *MAP_REDUCE,
                      *SCORE_REDUCE, *NORMALIZE_METHODS, *(name for names in CHOICES.values() for name in names),
                      *RECIPES, *BACKBONES, *PATCHCORE_PRESETS, "vision_patchcore", "vision_padim",
                      "vision_autoencoder", "conv_autoencoder", "model.onnx", "infer_config.json", "1.0", "1.1"})
numbers = st.one_of(special_numbers, st.floats(), st.integers())
KINDS = {
    "null": st.none(),
    "boolean": st.booleans(),
    "integer": st.one_of(st.integers(), st.sampled_from([0, -1, 2**63, 10**400])),
    "number": st.one_of(st.floats(), special_numbers),
    "string": st.one_of(st.text(max_size=12), st.sampled_from(KNOWN_NAMES)),
    "list": st.lists(st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=6)), max_size=4),
    "object": st.dictionaries(st.text(max_size=8), st.one_of(st.none(), numbers, st.text(max_size=6)), max_size=3),
}
json_values = st.recursive(
    st.one_of(*KINDS.values()),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def kind_of(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {int: "integer", float: "number", str: "string", list: "list", dict: "object"}[type(value)]


def outcome(text: str) -> None:
    """Counts an outcome in `pytest --hypothesis-show-statistics` (how many examples got how far)."""
    if currently_in_test_context():
        event(text)


# "same_kind" (a leaf redrawn as another value of its own JSON type) most often: it keeps many examples
# parseable, so the checks on parsed values are reached, not only the refusals.
OPERATIONS = ("same_kind",) * 6 + ("delete", "replace", "retype", "number", "unknown_key")


@st.composite
def mutated(draw, base: dict, focus: tuple[str, ...] = (), plausible: dict | None = None):
    """(a deep copy of `base` with 1-3 drawn mutations, the paths they touched).

    A location is drawn from the whole tree or, half the time, from under the `focus` keys; `plausible` maps
    locations to strategies of records that are nearly right (so the checks inside them are reached too)."""
    tree = copy.deepcopy(base)
    touched = []
    if plausible and draw(st.booleans()):
        # A nearly right record first, then the mutations (possibly inside it).
        path = draw(st.sampled_from(sorted(plausible)))
        tree = set_at(tree, path, copy.deepcopy(draw(plausible[path])))
        touched.append(path)
    for _ in range(draw(st.sampled_from((1, 1, 1, 2, 3)))):
        paths = paths_of(tree)
        focused = [p for p in paths if p[:1] and p[0] in focus]
        # The top level itself now and then: in a small config it would otherwise be a large share of the draws.
        inner = paths[1:] if len(paths) > 1 and draw(st.sampled_from([True] * 19 + [False])) else paths
        path = draw(st.sampled_from(focused if focused and draw(st.booleans()) else inner))
        operation = draw(st.sampled_from(OPERATIONS + (("plausible",) if plausible else ())))
        node = get_at(tree, path)
        leaves = [p for p in paths if p[: len(path)] == path and not isinstance(get_at(tree, p), (dict, list))]
        if operation == "same_kind" and leaves:
            path = draw(st.sampled_from(leaves))
            tree = set_at(tree, path, draw(KINDS[kind_of(get_at(tree, path))]))
        elif operation == "delete" and path:
            del get_at(tree, path[:-1])[path[-1]]
        elif operation == "retype":
            other = draw(st.sampled_from(sorted(set(KINDS) - {kind_of(node)})))
            tree = set_at(tree, path, draw(KINDS[other]))
        elif operation == "number":
            tree = set_at(tree, path, draw(numbers))
        elif operation == "unknown_key" and isinstance(node, dict):
            key = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in node))
            node[key] = draw(json_values)
            path = path + (key,)
        elif operation == "plausible":
            path = draw(st.sampled_from(sorted(plausible)))
            if not (path[:-1] in paths and isinstance(get_at(tree, path[:-1]), dict)):
                continue
            tree = set_at(tree, path, copy.deepcopy(draw(plausible[path])))
        else:
            tree = set_at(tree, path, draw(json_values))
        touched.append(path)
    return tree, touched


def names_a_key_path(message: str, touched: list[tuple], known: set[str], record: type) -> bool:
    """Whether an error message names where it failed: a location the mutations touched (or one above it; a
    replaced top level: any of the record's keys), a `known` key path (a cross-field check), or the top level."""
    named = {"top level"} | known
    for path in touched:
        named |= {dotted(path[:n]) for n in range(1, len(path) + 1)}
        if not path:
            named |= {spec.name for spec in dataclasses.fields(record)}
    # The parsers quote a path with repr(), which escapes control characters and backslashes.
    return any(name and (name in message or repr(name)[1:-1] in message) for name in named)


# --------------------------------------------------------------------------- manifest parsing

# Besides the paths a mutation touched, what a refusal of a manifest may name: the format check comes first
# (a replaced top level is refused by its format).
MANIFEST_NAMED = {"format", "format_version"}
MANIFEST_FOCUS = ("files", "onnx", "thresholds", "defects", "tiling", "map_postprocess", "format_version")
floats_or_special = st.one_of(st.floats(), special_numbers)


def mostly(valid: st.SearchStrategy, other: st.SearchStrategy = floats_or_special) -> st.SearchStrategy:
    """Usually a valid value (so the checks across keys are reached), sometimes anything of the kind."""
    # one_of() would draw each distinct branch equally often, so the weighting is drawn first.
    return st.sampled_from([True] * 6 + [False]).flatmap(lambda usual: valid if usual else other)


unit = st.floats(0.0, 1.0)
ksizes = mostly(st.sampled_from([0, 3, 5, 7]), st.integers(-3, 9))
MANIFEST_PLAUSIBLE = {
    ("tiling",): st.fixed_dictionaries(
        {"tile_size": mostly(st.integers(32, 512), st.integers(-5, 1100)),
         "stride": mostly(st.integers(1, 512), st.integers(-5, 1100))},
        optional={"score_reduce": st.sampled_from(["max", "mean", "topk_mean", "median"]),
                  "score_topk": mostly(unit), "map_reduce": st.sampled_from(["max", "mean", "hann", "sum"])}),
    ("map_postprocess", "config"): st.fixed_dictionaries(
        {}, optional={"normalize": st.booleans(),
                      "normalize_method": st.sampled_from(["percentile", "minmax", "none", "zscore"]),
                      "percentile_range": mostly(st.just([1.0, 99.0]), st.lists(floats_or_special, max_size=3)),
                      "gaussian_sigma": mostly(st.floats(0.0, 8.0)),
                      "morph_open_ksize": ksizes, "morph_close_ksize": ksizes}),
    ("map_postprocess", "stats"): st.fixed_dictionaries(
        {"method": st.sampled_from(["percentile", "minmax", "none"]), "low": mostly(st.floats(-1.0, 0.5)),
         "high": mostly(st.floats(0.6, 3.0)), "count": mostly(st.integers(1, 10**6), st.integers(-5, 0))}),
    ("thresholds", "normal_pixel_quantiles"): st.integers(1, 5).flatmap(lambda n: st.fixed_dictionaries(
        {"q": mostly(st.lists(unit, min_size=n, max_size=n), st.lists(floats_or_special, max_size=4)),
         "values": mostly(st.lists(st.floats(0.0, 2.0), min_size=n, max_size=n),
                          st.lists(floats_or_special, max_size=4))})),
    ("defects",): st.fixed_dictionaries(
        {}, optional={
            "enabled": st.booleans(),
            "pixel_threshold": st.none() | mostly(st.floats(0.0, 2.0)),
            "pixel_threshold_strategy": st.sampled_from(sorted(THRESHOLD_STRATEGIES, reverse=True) + ["adaptive"]),
            "pixel_normal_quantile": mostly(st.floats(0.0, 1.0, exclude_min=True, exclude_max=True)),
            "hysteresis_low": st.none() | mostly(st.floats(0.0, 2.0)),
            "min_score_max": st.none() | mostly(st.floats(0.0, 2.0)),
            "min_score_mean": st.none() | mostly(st.floats(0.0, 2.0)),
            "min_fill_ratio": st.none() | mostly(unit), "max_aspect_ratio": st.none() | mostly(st.floats(1.0, 20.0)),
            "min_solidity": st.none() | mostly(unit),
            "region_peak_fraction": st.none() | mostly(st.floats(0.0, 1.0, exclude_max=True)),
            "roi_xyxy_norm": st.none() | mostly(st.just([0.1, 0.1, 0.9, 0.9]),
                                                st.lists(floats_or_special, min_size=3, max_size=5)),
            "smooth": st.sampled_from(["none", "gaussian", "median", "box"]), "smooth_ksize": ksizes,
            "min_area": mostly(st.integers(0, 100), st.integers(-5, -1)),
            "max_regions": st.none() | mostly(st.integers(1, 20), st.integers(-5, 0))}),
}


def acted_on_numbers(manifest: Manifest) -> dict[str, float]:
    """Every number the runtime compares scores or pixels against, or scales maps by, by key path."""
    thresholds, defects = manifest.thresholds, manifest.defects
    found = {"thresholds.image.value": thresholds.image.value, "thresholds.pixel.value": thresholds.pixel.value}
    if thresholds.normal_pixel_quantiles is not None:
        table = thresholds.normal_pixel_quantiles
        found |= {f"thresholds.normal_pixel_quantiles.q[{i}]": v for i, v in enumerate(table.q)}
        found |= {f"thresholds.normal_pixel_quantiles.values[{i}]": v for i, v in enumerate(table.values)}
    for name in ("pixel_threshold", "pixel_normal_quantile", "hysteresis_low", "min_score_max", "min_score_mean",
                 "min_fill_ratio", "max_aspect_ratio", "min_solidity", "region_peak_fraction"):
        if getattr(defects, name) is not None:
            found[f"defects.{name}"] = getattr(defects, name)
    found |= {f"defects.roi_xyxy_norm[{i}]": v for i, v in enumerate(defects.roi_xyxy_norm or ())}
    post = manifest.map_postprocess
    if post.stats is not None:
        found |= {"map_postprocess.stats.low": post.stats.low, "map_postprocess.stats.high": post.stats.high}
    if post.config is not None:
        found["map_postprocess.config.gaussian_sigma"] = post.config.gaussian_sigma
        found |= {f"map_postprocess.config.percentile_range[{i}]": v
                  for i, v in enumerate(post.config.percentile_range)}
    if manifest.tiling is not None:
        found["tiling.score_topk"] = manifest.tiling.score_topk
    return found


def canonical(manifest: Manifest) -> str:
    return json.dumps(manifest_to_json(manifest), sort_keys=True)


def check_manifest_property(data, touched) -> Manifest | None:
    """Parses `data` through parse_manifest and bundle.read_manifest: a typed manifest whose numbers are finite
    and which survives the round trip, or ManifestError / BundleError naming a key path; nothing else."""
    try:
        manifest = parse_manifest(data)
    except ManifestError as exc:
        assert names_a_key_path(str(exc), touched, MANIFEST_NAMED, Manifest), f"{exc}: no key path ({touched})"
        with pytest.raises(BundleError) as refused:
            read_manifest(data)
        assert str(refused.value) == f"{MANIFEST_NAME}: {exc}"
        outcome("manifest refused")
        return None
    outcome("manifest parsed")
    assert read_manifest(data) == manifest or canonical(read_manifest(data)) == canonical(manifest)
    not_finite = {path: v for path, v in acted_on_numbers(manifest).items() if not math.isfinite(v)}
    assert not not_finite, f"parsed with non-finite thresholds {not_finite} (mutated {touched})"
    # Written back and read again, the manifest is the same one (compared as JSON where a free-form field
    # holds NaN, which equals nothing).
    text = canonical(manifest)
    again = parse_manifest(json.loads(json.dumps(manifest_to_json(manifest))))
    assert canonical(again) == text
    if "NaN" not in text:
        assert again == manifest
    return manifest


def bundle_manifest(edge_fixture) -> dict:
    return json.loads((edge_fixture["bundle_dir"] / MANIFEST_NAME).read_text(encoding="utf-8"))


GOLDEN_DATA = json.loads(GOLDEN.read_text(encoding="utf-8"))


@settings(BOUNDED, max_examples=500)
@given(case=mutated(GOLDEN_DATA, MANIFEST_FOCUS, MANIFEST_PLAUSIBLE))
def test_a_mutated_golden_manifest_parses_typed_and_finite_or_is_refused_naming_a_key_path(case):
    check_manifest_property(*case)


@pytest.fixture(scope="module")
def fixture_manifest(edge_fixture) -> dict:
    return bundle_manifest(edge_fixture)


@settings(BOUNDED, max_examples=300)
@given(data=st.data())
def test_a_mutated_1_1_manifest_parses_typed_and_finite_or_is_refused_naming_a_key_path(fixture_manifest, data):
    check_manifest_property(*data.draw(mutated(fixture_manifest, MANIFEST_FOCUS, MANIFEST_PLAUSIBLE)))


def test_the_unmutated_manifests_pass_the_property(fixture_manifest):
    """The property's own baseline: both real manifests parse, round trip and are finite."""
    assert check_manifest_property(GOLDEN_DATA, []) is not None
    assert check_manifest_property(fixture_manifest, []) is not None


def scores_with(manifest: Manifest) -> None:
    """What a parsed manifest must allow, or the bundle would open and then fail on its first image: its map
    post-processing runs on a map, and its defect defaults resolve a finite pixel threshold (or are refused as
    a ContextError, which pyimgano-infer --defects reports before any output, exit 2)."""
    context = ScoringContext.from_manifest(manifest)
    ramp = np.linspace(0.0, 2.0, 32 * 48, dtype=np.float32).reshape(32, 48)
    post = manifest.map_postprocess.config
    # Parsing bounds the blur (MAX_GAUSSIAN_SIGMA), so every accepted one runs.
    assert post is None or post.gaussian_sigma <= MAX_GAUSSIAN_SIGMA
    [finished] = context.steps.finish([ramp])
    assert finished.shape == ramp.shape and np.isfinite(finished).all()
    try:
        assert math.isfinite(context.pixel_threshold_for(context.defects))
    except ContextError:
        outcome("pixel strategy refused (ContextError)")




@settings(PINNED, max_examples=20)
@example(sigma=1e9)
@given(sigma=st.floats(0.0, 1e12))
def test_a_map_blur_of_any_finite_sigma_the_manifest_accepts_runs(fixture_manifest, sigma):
    data = copy.deepcopy(fixture_manifest)
    data["map_postprocess"] = {"in_graph": [], "config": {"gaussian_sigma": sigma}, "stats": None}
    try:
        manifest = parse_manifest(data)
    except ManifestError as exc:
        assert "map_postprocess" in str(exc)
        return
    [finished] = ScoringContext.from_manifest(manifest).steps.finish([np.ones((32, 48), np.float32)])
    assert np.isfinite(finished).all()


@settings(BOUNDED, max_examples=300)
@given(config=st.none() | MANIFEST_PLAUSIBLE[("map_postprocess", "config")],
       stats=st.none() | MANIFEST_PLAUSIBLE[("map_postprocess", "stats")])
def test_any_map_post_processing_a_manifest_accepts_runs(fixture_manifest, config, stats):
    data = copy.deepcopy(fixture_manifest)
    data["map_postprocess"] = {"in_graph": [], "config": config, "stats": stats}
    manifest = check_manifest_property(data, [("map_postprocess",)])
    if manifest is not None:
        scores_with(manifest)


@settings(BOUNDED, max_examples=300)
@given(defects=MANIFEST_PLAUSIBLE[("defects",)],
       table=st.none() | MANIFEST_PLAUSIBLE[("thresholds", "normal_pixel_quantiles")])
def test_any_defect_defaults_a_manifest_accepts_resolve_a_pixel_threshold(fixture_manifest, defects, table):
    data = copy.deepcopy(fixture_manifest)
    data["defects"] = defects
    data["thresholds"]["normal_pixel_quantiles"] = table
    manifest = check_manifest_property(data, [("defects",), ("thresholds", "normal_pixel_quantiles")])
    if manifest is not None:
        scores_with(manifest)


# --------------------------------------------------------------------------- bundle open

@pytest.fixture()
def bundle_copy(edge_fixture, tmp_path) -> Path:
    """One copy of the fixture's bundle per test; examples rewrite only its manifest.json."""
    target = tmp_path / edge_fixture["bundle_dir"].name
    shutil.copytree(edge_fixture["bundle_dir"], target)
    return target


def write_manifest(bundle: Path, text: str | bytes) -> None:
    path = bundle / MANIFEST_NAME
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))


def check_opens_or_refused(bundle: Path, listed_files: set[str]) -> None:
    """open_bundle either gives a bundle that can score (its map post-processing runs, its pixel threshold
    resolves) or raises BundleError naming manifest.json, a listed file or a file in the bundle; never another
    exception."""
    present = {path.relative_to(bundle).as_posix() for path in bundle.rglob("*")}
    try:
        opened = open_bundle(bundle)
    except BundleError as exc:
        message = str(exc)
        assert any(message.startswith(f"{name}: ") for name in {MANIFEST_NAME} | listed_files | present), message
        outcome("bundle refused: " + ("manifest" if message.startswith(f"{MANIFEST_NAME}: ") else "a file"))
        return
    outcome("bundle opened")
    assert opened.model_path.is_file() and opened.context == ScoringContext.from_manifest(opened.manifest)
    assert all(math.isfinite(v) for v in acted_on_numbers(opened.manifest).values())
    scores_with(opened.manifest)


def listed(data) -> set[str]:
    files = data.get("files") if isinstance(data, dict) else None
    return set(files) if isinstance(files, dict) else set()


FILE_NAMES = st.one_of(st.sampled_from(["model.onnx", "infer_config.json", "manifest.json", "", ".", "..",
                                        "../model.onnx", "/etc/hostname", "sub/model.onnx", "model.onnx/",
                                        "a\x00b", "./model.onnx"]),
                       st.text(max_size=40))


@st.composite
def mutated_bundle_manifest(draw, base: dict):
    """A mutated manifest, sometimes also with a files entry renamed or re-pointed (to reach verify_files)."""
    tree, touched = draw(mutated(base, MANIFEST_FOCUS, MANIFEST_PLAUSIBLE))
    if isinstance(tree, dict) and isinstance(tree.get("files"), dict) and tree["files"] and draw(st.booleans()):
        old = draw(st.sampled_from(sorted(tree["files"])))
        new = draw(FILE_NAMES)
        tree["files"][new] = tree["files"].pop(old)
        touched.append(("files", new))
    return tree, touched


@settings(BOUNDED, max_examples=150)
@given(data=st.data())
def test_a_mutated_manifest_in_a_bundle_opens_usable_or_is_refused_as_a_bundle_error(bundle_copy, fixture_manifest,
                                                                                    data):
    tree, _ = data.draw(mutated_bundle_manifest(fixture_manifest))
    write_manifest(bundle_copy, json.dumps(tree))  # json writes NaN / Infinity, as a hand edit may
    check_opens_or_refused(bundle_copy, listed(tree))


@settings(BOUNDED, max_examples=60)
@given(data=st.data())
def test_any_manifest_bytes_open_or_are_refused_as_a_bundle_error(bundle_copy, fixture_manifest, data):
    """Truncated, bit-flipped, re-encoded or junk manifest files."""
    text = json.dumps(fixture_manifest, indent=1).encode("utf-8")
    how = data.draw(st.sampled_from(["truncate", "flip", "bom", "utf16", "junk", "empty"]))
    if how == "truncate":
        raw = text[: data.draw(st.integers(0, len(text)))]
    elif how == "flip":
        raw = bytearray(text)
        for offset in data.draw(st.lists(st.integers(0, len(text) - 1), min_size=1, max_size=4)):
            raw[offset] ^= 1 << data.draw(st.integers(0, 7))
        raw = bytes(raw)
    elif how == "bom":
        raw = b"\xef\xbb\xbf" + text
    elif how == "utf16":
        raw = text.decode("utf-8").encode("utf-16")
    elif how == "junk":
        raw = data.draw(st.binary(max_size=256))
    else:
        raw = b""
    write_manifest(bundle_copy, raw)
    check_opens_or_refused(bundle_copy, listed(fixture_manifest))


def nested_in_model_details(manifest: dict, depth: int) -> str:
    """The manifest's text with `depth` nested lists in the model's free-form self-description."""
    text = json.dumps({**manifest, "model": {**manifest["model"], "notes": "@"}})
    return text.replace('"@"', "[" * depth + "]" * depth)


@settings(BOUNDED, max_examples=10)
@example(depth=100_000)
@given(depth=st.integers(1, 200_000))
def test_a_deeply_nested_manifest_opens_or_is_refused_as_a_bundle_error(bundle_copy, fixture_manifest, depth):
    write_manifest(bundle_copy, nested_in_model_details(fixture_manifest, depth))
    check_opens_or_refused(bundle_copy, listed(fixture_manifest))


@PINNED
@example(digits=5_000)
@given(digits=st.integers(1, 20_000))
def test_a_manifest_integer_of_any_length_opens_or_is_refused_as_a_bundle_error(bundle_copy, fixture_manifest,
                                                                               digits):
    text = json.dumps({**fixture_manifest, "files": {**fixture_manifest["files"],
                                                     "infer_config.json": {"sha256": "0" * 64, "size": "@"}}})
    write_manifest(bundle_copy, text.replace('"@"', "9" * digits))
    check_opens_or_refused(bundle_copy, listed(fixture_manifest))


@PINNED
@example(length=300)
@given(length=st.integers(1, 1_000))
def test_a_listed_file_name_of_any_length_opens_or_is_refused_as_a_bundle_error(bundle_copy, fixture_manifest,
                                                                              length):
    data = copy.deepcopy(fixture_manifest)
    data["files"]["n" * length] = {"sha256": "0" * 64, "size": 1}
    write_manifest(bundle_copy, json.dumps(data))
    check_opens_or_refused(bundle_copy, listed(data))


# --------------------------------------------------------------------------- workbench config

# Besides the paths a mutation touched, what a refusal of a config may name: any nested key (the model's checks
# and the false-reject-rate spellings relate keys across sections) or the recipe.
CONFIG_NAMED = {path for path in schema_paths(WorkbenchConfig) if "." in path} | {"recipe"}
# Valid configs as docs/CONFIG.md and the recipes write them: the seed's minimal one, each recipe, each model.
VALID_CONFIGS = (
    {"dataset": {"root": "/data/mvtec", "category": "bottle"}},
    {"recipe": "industrial-adapt", "seed": 123,
     "dataset": {"name": "mvtec", "root": "/path/to/mvtec_ad", "category": "bottle", "resize": [256, 256],
                 "input_mode": "paths"},
     "model": {"name": "vision_patchcore", "device": "cuda", "preset": "industrial-balanced", "pretrained": True,
               "contamination": 0.1},
     "output": {"output_dir": "runs/my_run", "save_run": True, "per_image_jsonl": True}},
    {"recipe": "industrial-adapt-highres", "dataset": {"root": "data", "category": "wafer", "resize": [512, 512]},
     "calibration": {"strategy": "holdout", "holdout_fraction": 0.25, "target_false_reject_rate": 0.005}},
    {"recipe": "industrial-adapt-fp40", "dataset": {"name": "custom", "root": "data", "category": "part"},
     "defects": {"pixel_threshold_strategy": "fixed", "pixel_threshold": 0.7, "hysteresis_low": 0.5,
                 "smooth": "gaussian", "smooth_ksize": 5}},
    {"recipe": "micro-finetune-autoencoder", "dataset": {"root": "data", "category": "tile"},
     "model": {"name": "vision_autoencoder", "device": "cpu"}, "training": {"epochs": 2, "lr": 0.01}},
    {"dataset": {"root": "data", "category": "screw", "limit_train": 50},
     "model": {"name": "vision_padim", "backbone": "resnet18", "n_features": 64},
     "calibration": {"image_quantile": 0.99, "pixel_quantile": 0.999}},
)
CONFIG_FOCUS = ("dataset", "model", "calibration", "adaptation", "defects", "training", "recipe", "seed")


@st.composite
def mutated_config(draw):
    base = draw(st.sampled_from(VALID_CONFIGS))
    # Known keys, set where the base config leaves them out, so every typed field is reached, not only
    # those the base config happens to write.
    resolved = to_json(parse_config(base))
    base = copy.deepcopy(base)
    for path in draw(st.lists(st.sampled_from([p for p in paths_of(resolved) if len(p) == 2]), max_size=2)):
        base.setdefault(path[0], {})
        if isinstance(base[path[0]], dict):
            base[path[0]][path[1]] = get_at(resolved, path)
    return draw(mutated(base, CONFIG_FOCUS))


def assert_config_is_usable(config: WorkbenchConfig, touched) -> None:
    """A config that validates holds only finite numbers and survives to_json -> parse_config unchanged."""
    data = to_json(config)
    not_finite = {dotted(p): get_at(data, p) for p in paths_of(data)
                  if isinstance(get_at(data, p), float) and not math.isfinite(get_at(data, p))}
    assert not not_finite, f"validated with non-finite numbers {not_finite} (mutated {touched})"
    again = parse_config(json.loads(json.dumps(data)))
    get_model(again.model.name).validate(again)
    assert again == config


@settings(BOUNDED, max_examples=500)
@given(case=mutated_config())
def test_a_mutated_config_validates_round_trip_or_is_refused_naming_a_key_path(case):
    """parse_config + the model's own checks, as `pyimgano-train --dry-run` runs them."""
    data, touched = case
    try:
        config = parse_config(data)
        get_model(config.model.name).validate(config)
    except ConfigError as exc:
        assert names_a_key_path(str(exc), touched, CONFIG_NAMED, WorkbenchConfig), f"{exc}: no key path ({touched})"
        outcome("config refused")
        return
    outcome("config valid")
    assert_config_is_usable(config, touched)


def test_every_valid_config_passes_the_property():
    for data in VALID_CONFIGS:
        config = parse_config(data)
        get_model(config.model.name).validate(config)
        assert_config_is_usable(config, [])


# --------------------------------------------------------------------------- image decoding

def real_files() -> list[tuple[bytes, str, tuple[int, int]]]:
    """A few of the real data set's files (PIPED PNGs, magnetic_tile JFIF JPEGs of varied sizes), where present."""
    found = []
    for category, pattern in (("piped_flr01", "test/impurity/*.png"), ("magnetic_tile", "test/*/*.jpg")):
        for path in sorted((DATA_ROOT / category).glob(pattern))[:3]:
            raw = path.read_bytes()
            image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
            found.append((raw, path.suffix[1:], image.shape[:2]))
    return found


REAL_FILES = real_files()


@st.composite
def encoded_images(draw) -> tuple[bytes, str, tuple[int, int]]:
    """(file bytes, format, (height, width)): a drawn image as OpenCV writes it, or a real file."""
    if REAL_FILES and draw(st.integers(0, 4)) == 0:
        return draw(st.sampled_from(REAL_FILES))
    fmt = draw(st.sampled_from(["png", "jpg", "bmp"]))
    height, width = draw(st.integers(1, 96)), draw(st.integers(1, 96))
    channels = draw(st.sampled_from([1, 3, 4] if fmt == "png" else [1, 3]))
    dtype = draw(st.sampled_from([np.uint8, np.uint16])) if fmt == "png" else np.uint8
    seed = draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, (height, width, channels), dtype=dtype,
                                                  endpoint=True)
    params = [cv2.IMWRITE_JPEG_PROGRESSIVE, int(draw(st.booleans()))] if fmt == "jpg" else []
    ok, encoded = cv2.imencode(f".{fmt}", pixels if channels > 1 else pixels[:, :, 0], params)
    assert ok
    return encoded.tobytes(), fmt, (height, width)


def set_stated_size(raw: bytes, fmt: str, height: int, width: int) -> bytes:
    """The file with its header stating (height, width): PNG IHDR, BMP info header, JPEG start of frame."""
    data = bytearray(raw)
    if fmt == "png":
        data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    elif fmt == "bmp":
        data[18:26] = width.to_bytes(4, "little", signed=True) + height.to_bytes(4, "little", signed=True)
    else:
        offset = 2
        while not (0xC0 <= data[offset + 1] <= 0xCF and data[offset + 1] not in (0xC4, 0xC8, 0xCC)):
            offset += 2 + int.from_bytes(data[offset + 2 : offset + 4], "big")
        data[offset + 5 : offset + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


@st.composite
def image_files(draw) -> tuple[bytes, str, tuple[int, int] | None, str]:
    """(bytes, format, the true size if the file is intact, how it was damaged)."""
    raw, fmt, size = draw(encoded_images())
    how = draw(st.sampled_from(["intact", "truncated", "header_bits", "any_bits", "stated_size", "junk",
                                "magic_and_junk"]))
    if how == "intact":
        return raw, fmt, size, how
    if how == "truncated":
        return raw[: draw(st.integers(0, len(raw) - 1))], fmt, None, how
    if how in ("header_bits", "any_bits"):
        data = bytearray(raw)
        end = min(len(raw), 64) if how == "header_bits" else len(raw)
        for offset in draw(st.lists(st.integers(0, end - 1), min_size=1, max_size=6)):
            data[offset] ^= 1 << draw(st.integers(0, 7))
        return bytes(data), fmt, None, how
    if how == "stated_size":
        limit = 2**16 - 1 if fmt == "jpg" else 2**31 - 1
        height, width = draw(st.integers(0, limit)), draw(st.integers(0, limit))
        return set_stated_size(raw, fmt, height, width), fmt, None, how
    magic = {"png": raw[:8], "jpg": raw[:2], "bmp": raw[:2]}[fmt] if how == "magic_and_junk" else b""
    return magic + draw(st.binary(max_size=512)), fmt, None, how


# The defaults most often, so intact and damaged files are decoded as well as refused by size.
limits_strategy = st.builds(ImageLimits, max_bytes=st.sampled_from([1, 64, 2**12, 2**20] + [256 * 2**20] * 4),
                            max_pixels=st.sampled_from([1, 100, 1_000, 4_096] + [100_000_000] * 4))


@settings(BOUNDED, max_examples=600)
@given(case=image_files(), limits=limits_strategy)
def test_any_image_file_decodes_within_limits_or_is_an_image_read_error(tmp_path, case, limits):
    raw, fmt, size, how = case
    path = tmp_path / f"input.{fmt}"
    path.write_bytes(raw)
    stated = header_size(raw[: 2**20])
    try:
        image = read_rgb(path, limits)
    except ImageReadError as exc:
        message = str(exc)
        assert message and "\n" not in message
        if size is not None and len(raw) <= limits.max_bytes and size[0] * size[1] <= limits.max_pixels:
            pytest.fail(f"an intact {fmt} of {size} within {limits} was refused: {message}")
        if len(raw) <= limits.max_bytes and stated is not None and stated[0] * stated[1] > limits.max_pixels:
            # Refused from its header, before decoding: a decode of a header whose size was rewritten (PNG: CRC
            # no longer matches) would have failed with "not decodable" instead.
            assert "exceeds the limit" in message and "--max-image-pixels" in message, message
        outcome(f"{how}: refused")
        return
    outcome(f"{how}: decoded")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] * image.shape[1] <= limits.max_pixels
    assert len(raw) <= limits.max_bytes
    if stated is not None:
        assert stated[0] * stated[1] <= limits.max_pixels
    if size is not None:
        assert image.shape[:2] == size


@settings(BOUNDED, max_examples=200)
@given(image=encoded_images(), exif=st.integers(0, 70_000))
def test_the_header_states_the_size_opencv_wrote(image, exif):
    """header_size reads PNG, BMP and JPEG sizes exactly, JPEG also behind a large APP1 (EXIF) segment."""
    raw, fmt, size = image
    if fmt == "jpg" and exif:
        length = min(exif, 65_533)
        raw = raw[:2] + b"\xff\xe1" + (length + 2).to_bytes(2, "big") + bytes(length) + raw[2:]
    assert header_size(raw) == size


# --------------------------------------------------------------------------- tiling

@st.composite
def tiled_images(draw, max_side: int, max_tiles: int):
    height, width = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    tile = draw(st.integers(32, 640))
    # The smallest stride that keeps the grid under max_tiles (tile_origins: ceil((n - tile) / stride) + 1 a side).
    per_side = max(1, math.isqrt(max_tiles) - 1)
    smallest = max(1, math.ceil(max(height - tile, width - tile, 0) / per_side))
    if smallest > tile:
        tile = max(tile, smallest)
    stride = draw(st.integers(min(smallest, tile), tile))
    config = TilingConfig(tile_size=tile, stride=stride, map_reduce=draw(st.sampled_from(MAP_REDUCE)))
    return (height, width), config


@settings(BOUNDED, max_examples=300)
@given(case=tiled_images(max_side=8192, max_tiles=4096))
def test_the_grid_covers_every_pixel_with_full_tiles_and_tile_count_matches(case):
    (height, width), config = case
    grid = make_grid((height, width), config)
    assert tile_count((height, width), config) == len(grid.boxes) > 0
    rows = sorted({(y0, y1) for y0, _, y1, _ in grid.boxes})
    columns = sorted({(x0, x1) for _, x0, _, x1 in grid.boxes})
    # Row-major, each (row, column) once: checked per axis, the coverage of every pixel follows.
    assert grid.boxes == [(y0, x0, y1, x1) for y0, y1 in rows for x0, x1 in columns]
    for spans, length in ((rows, height), (columns, width)):
        covered = np.zeros(length, dtype=np.int32)
        for start, end in spans:
            # Every tile holds only real pixels, as many as the image allows (flush, never overhanging).
            assert 0 <= start < end <= length and end - start == min(config.tile_size, length)
            covered[start:end] += 1
        assert covered.min() >= 1
        steps = np.diff([start for start, _ in spans])
        assert spans[0][0] == 0 and (steps > 0).all() and (steps <= config.stride).all()
        assert spans[-1][0] == max(0, length - config.tile_size)


@settings(BOUNDED, max_examples=100)
@given(case=tiled_images(max_side=1200, max_tiles=36), model_side=st.integers(1, 64),
       value=st.floats(-1e6, 1e6, allow_nan=False, width=32))
def test_blending_constant_tile_maps_gives_that_constant(case, model_side, value):
    image_hw, config = case
    grid = make_grid(image_hw, config)
    maps = np.full((len(grid.boxes), model_side, model_side), value, dtype=np.float32)
    blended = blend_maps(maps, grid, config)
    assert blended.shape == image_hw and blended.dtype == np.float32
    np.testing.assert_allclose(blended, value, rtol=1e-6, atol=1e-30)
