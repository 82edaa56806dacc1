"""Tests for pyimgano.models.patchcore / backbones / registry and the checkpoint round trip.

Every check compares a measured number with a reference computed here in plain torch / numpy / OpenCV /
SciPy: brute-force distances, a textbook greedy k-center, the paper's reweighted image score. Networks
run on the CPU with 64x64 inputs and random (seeded) weights unless the property needs real features.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

import torch.nn.functional as F  # noqa: E402

from pyimgano.config import ConfigError, ModelConfig  # noqa: E402
from pyimgano.models import coreset, patchcore_spec, registry  # noqa: E402
from pyimgano.models.backbones import get_backbone_spec  # noqa: E402
from pyimgano.models.coreset import greedy_coreset, rows_for_ratio  # noqa: E402
from pyimgano.models.features import (  # noqa: E402
    WeightsNotFoundError,
    build_feature_extractor,
    hub_checkpoint_dir,
    resolve_weights,
)
from pyimgano.models.base import NotFittedError  # noqa: E402
from pyimgano.models.patchcore import (  # noqa: E402
    MemoryBank,
    VisionPatchCore,
    adaptive_pool_matrix,
)
from pyimgano.models.patchcore_spec import PatchCoreParams  # noqa: E402
from pyimgano.models.maps import MAP_SIGMA, MapSmoother, blur_matrix, gaussian_kernel_1d  # noqa: E402
from pyimgano.runtime.images import InputContract  # noqa: E402
from pyimgano.workbench import checkpoint  # noqa: E402

CPU = torch.device("cpu")
HW = 64

BASE_PARAMS = PatchCoreParams(
    backbone="mobilenet_v2",
    layers=("features.6", "features.13"),
    coreset_ratio=0.5,
    num_neighbors=3,
    embed_dim=1024,
    pretrained=False,
    weights_path=None,
    input_hw=(HW, HW),
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    seed=0,
    batch_size=4,
)


def _params(**changes) -> PatchCoreParams:
    return dataclasses.replace(BASE_PARAMS, **changes)


def _grey_images(n: int, seed: int) -> np.ndarray:
    """Plain grey surfaces with mild sensor noise: the 'normal' product."""
    rng = np.random.default_rng(seed)
    return np.clip(110.0 + rng.normal(0.0, 8.0, (n, HW, HW, 3)), 0, 255).astype(np.uint8)


def _mobilenet_weights_present() -> bool:
    return (hub_checkpoint_dir() / get_backbone_spec("mobilenet_v2").weights_file).is_file()


@pytest.fixture(scope="module")
def train_images() -> np.ndarray:
    return _grey_images(6, seed=0)


@pytest.fixture(scope="module")
def fitted(train_images) -> VisionPatchCore:
    return VisionPatchCore(BASE_PARAMS, CPU).fit(train_images)


def _patch_scores_reference(detector: VisionPatchCore, images: np.ndarray):
    """(features [N,P,D], patch scores [N,P], nearest bank row [N,P]) by brute-force float64 cdist."""
    feats = detector.embed(images).double().reshape(len(images), -1, detector.feature_dim)
    bank = detector.memory_bank_.double()
    dist = torch.cdist(feats.reshape(-1, feats.shape[2]), bank).reshape(feats.shape[0], feats.shape[1], -1)
    scores, nearest = dist.min(dim=2)
    return feats, scores, nearest


# --------------------------------------------------------------------------- small building blocks


@pytest.mark.parametrize("in_dim,out_dim", [(1536, 1024), (128, 100), (7, 3), (12, 4), (5, 5), (10, 7)])
def test_adaptive_pool_matrix_matches_adaptive_avg_pool1d(in_dim, out_dim):
    x = torch.randn(9, in_dim, generator=torch.Generator().manual_seed(in_dim * 31 + out_dim), dtype=torch.float64)
    matrix = adaptive_pool_matrix(in_dim, out_dim)
    assert matrix.shape == (in_dim, out_dim)
    expected = F.adaptive_avg_pool1d(x[:, None], out_dim)[:, 0]
    torch.testing.assert_close(x @ matrix.double(), expected, rtol=1e-6, atol=1e-6)
    # Each output is an average: its column sums to one.
    torch.testing.assert_close(matrix.sum(dim=0), torch.ones(out_dim), rtol=1e-6, atol=1e-6)


def test_gaussian_kernel_sigma4_is_normalised_symmetric_33_taps():
    kernel = gaussian_kernel_1d(4.0)
    assert kernel.shape == (33,)  # radius int(4 * sigma + 0.5) = 16, SciPy's truncate=4 convention
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(kernel, kernel.flip(0), rtol=0, atol=0)
    assert int(kernel.argmax()) == 16
    assert bool((kernel[1:17] > kernel[:16]).all())  # strictly rising to the centre
    # Ratio of neighbouring taps is exp(-(2k+1) / (2 sigma^2)).
    assert float(kernel[17] / kernel[16]) == pytest.approx(math.exp(-1.0 / 32.0), rel=1e-5)


@pytest.mark.parametrize("chunk_rows", [4096, 7, 1])
@pytest.mark.parametrize("bank_rows", [5, 30, 64])
def test_nearest_in_bank_matches_bruteforce_cdist(chunk_rows, bank_rows):
    g = torch.Generator().manual_seed(bank_rows)
    queries = torch.randn(50, 16, generator=g) * 3.0 + 1.0
    bank = torch.randn(bank_rows, 16, generator=g) * 3.0
    ref = torch.cdist(queries.double(), bank.double()) ** 2
    ref_d2, ref_idx = ref.min(dim=1)
    # No near-ties: the reference nearest row is well separated from the second nearest.
    if bank_rows > 1:
        two = ref.topk(2, dim=1, largest=False).values
        assert float((two[:, 1] - two[:, 0]).min()) > 1e-3
    memory = MemoryBank(bank, chunk_rows=chunk_rows)
    d2, idx = memory.nearest(memory.centre(queries))
    assert idx.dtype == torch.long
    torch.testing.assert_close(idx, ref_idx, rtol=0, atol=0)
    torch.testing.assert_close(d2.double(), ref_d2, rtol=1e-4, atol=1e-3)


def test_nearest_in_bank_chunk_boundary_winner_in_last_partial_chunk():
    """The true nearest row sits in the last, partial chunk for some queries and in the first for others."""
    bank = torch.arange(23, dtype=torch.float32).view(23, 1) * 10.0  # rows 0, 10, ..., 220 on a line
    queries = torch.tensor([[221.0], [1.0], [69.0], [151.0], [-3.0]])
    memory = MemoryBank(bank, chunk_rows=7)
    d2, idx = memory.nearest(memory.centre(queries))
    assert idx.tolist() == [22, 0, 7, 15, 0]
    torch.testing.assert_close(d2, torch.tensor([1.0, 1.0, 1.0, 1.0, 9.0]), rtol=0, atol=1e-3)


@pytest.mark.parametrize("chunk_rows", [4096, 13])
def test_float16_bank_ranks_in_half_precision_and_returns_the_exact_distance_to_its_pick(chunk_rows):
    """A float16 bank ranks rows by a float16 key; the distance to the picked row is recomputed in float32
    (from the float16-stored row), so it is never below the true nearest distance and only fp16 ranking
    error above it."""
    g = torch.Generator().manual_seed(5)
    bank = torch.randn(200, 64, generator=g) * 4.0 + 20.0  # off-centre: centring must keep the key in range
    queries = bank[torch.randint(200, (300,), generator=g)] + torch.randn(300, 64, generator=g)
    stored = (bank - bank.mean(dim=0)).half().double()  # the rows the graph holds
    ref = torch.cdist((queries - bank.mean(dim=0)).double(), stored) ** 2
    ref_d2 = ref.min(dim=1).values
    memory = MemoryBank(bank, dtype=torch.float16, chunk_rows=chunk_rows)
    assert memory.rows_0.dtype == torch.float16
    d2, idx = memory.nearest(memory.centre(queries))
    assert d2.dtype == torch.float32
    torch.testing.assert_close(d2.double(), ref.gather(1, idx.unsqueeze(1)).squeeze(1), rtol=1e-5, atol=1e-4)
    assert bool((d2.double() >= ref_d2 * (1 - 1e-5)).all())
    # Normal patches (about 64 here) sit far below the norms (about 20^2 * 64): the key's fp16 rounding
    # moves the pick only among near-ties.
    assert float(((d2.double() - ref_d2) / ref_d2).max()) < 0.02
    assert float((idx == ref.argmin(dim=1)).double().mean()) > 0.95


def test_float16_bank_refuses_norms_beyond_half_precision():
    bank = torch.zeros(4, 2)
    bank[0, 0] = 1e3  # centred half-norm about 2.8e5 > 65504
    with pytest.raises(ValueError, match="overflow"):
        MemoryBank(bank, dtype=torch.float16)


@pytest.mark.parametrize("grid_hw,input_hw", [((32, 32), (256, 256)), ((5, 9), (40, 70)), ((17, 17), (17, 17))])
def test_map_smoother_equals_mirrored_separable_gaussian_convolution(grid_hw, input_hw):
    g = torch.Generator().manual_seed(0)
    grid = torch.rand(3, 1, *grid_hw, generator=g, dtype=torch.float32) * 5.0
    kernel = gaussian_kernel_1d(MAP_SIGMA)
    radius = (kernel.shape[0] - 1) // 2
    maps = grid.double()
    if grid_hw != input_hw:
        maps = F.interpolate(maps, size=input_hw, mode="bilinear", align_corners=False)
    maps = F.pad(maps, (radius, radius, radius, radius), mode="reflect")
    maps = F.conv2d(maps, kernel.double().view(1, 1, -1, 1))
    expected = F.conv2d(maps, kernel.double().view(1, 1, 1, -1))[:, 0]
    smoothed = MapSmoother(input_hw)(grid)
    assert smoothed.shape == (3, *input_hw)
    torch.testing.assert_close(smoothed.double(), expected, rtol=1e-5, atol=1e-5)
    # Its buffers are rebuilt with the graph, not saved: checkpoints do not depend on the map size.
    assert MapSmoother(input_hw).state_dict() == {}


def test_blur_matrix_needs_maps_larger_than_the_kernel_radius():
    with pytest.raises(ValueError, match="larger than 16 pixels"):
        blur_matrix(16, gaussian_kernel_1d(MAP_SIGMA))


# --------------------------------------------------------------------------- coreset


def _reference_greedy(points: torch.Tensor, k: int, first: int) -> list[int]:
    """Textbook greedy k-center (Gonzalez): repeatedly add the point farthest from the chosen centres."""
    selected = [first]
    min_d2 = ((points - points[first]) ** 2).sum(dim=1)
    while len(selected) < k:
        nxt = int(min_d2.argmax())
        selected.append(nxt)
        min_d2 = torch.minimum(min_d2, ((points - points[nxt]) ** 2).sum(dim=1))
    return selected


def _covering_radius(points: torch.Tensor, centres: torch.Tensor) -> float:
    return float(torch.cdist(points, points[centres]).min(dim=1).values.max())


def _clustered(n: int, dim: int, clusters: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g, dtype=torch.float64) * 10.0
    scale = torch.rand(clusters, 1, generator=g, dtype=torch.float64) * 2.0 + 0.2
    which = torch.randint(clusters, (n,), generator=g)
    return centres[which] + torch.randn(n, dim, generator=g, dtype=torch.float64) * scale[which]


@pytest.mark.parametrize(
    "n,dim,ratio,expected",
    [(101, 16, 0.1, 11), (300, 160, 0.3, 90), (250, 32, 0.5, 125), (10, 4, 0.01, 1), (37, 8, 0.5, 19)],
)
def test_greedy_coreset_size_and_uniqueness(n, dim, ratio, expected):
    feats = torch.randn(n, dim, generator=torch.Generator().manual_seed(n))
    keep = greedy_coreset(feats, rows_for_ratio(n, ratio), seed=3)
    assert keep.dtype == torch.long
    assert keep.numel() == expected == math.ceil(n * ratio)
    assert torch.unique(keep).numel() == expected
    assert int(keep.min()) >= 0 and int(keep.max()) < n


def test_greedy_coreset_unique_with_duplicated_rows(monkeypatch):
    """Real patch features repeat (flat backgrounds): every row appears twice; the coreset still has no repeats."""
    monkeypatch.setattr(coreset, "CORESET_ROUNDS_HINT", 10)  # 16 centres per round: the batched path
    g = torch.Generator().manual_seed(5)
    unique_rows = torch.randn(200, 24, generator=g) * 4.0 + 20.0  # large norms: GEMM distances cancel
    feats = torch.cat([unique_rows, unique_rows])[torch.randperm(400, generator=g)]
    keep = greedy_coreset(feats, 160, seed=1)  # 160 of 200 distinct rows
    assert keep.numel() == 160
    assert torch.unique(feats[keep], dim=0).shape[0] == 160


@pytest.mark.parametrize("seed", [0, 7])
def test_greedy_coreset_one_per_round_is_exact_greedy(monkeypatch, seed):
    monkeypatch.setattr(coreset, "CORESET_MAX_PER_ROUND", 1)
    n, dim, ratio = 400, 12, 0.1
    assert dim <= coreset.CORESET_PROJECTION_DIM  # no projection
    feats = _clustered(n, dim, clusters=6, seed=seed)
    first = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    expected = _reference_greedy(feats, math.ceil(n * ratio), first)
    assert greedy_coreset(feats, math.ceil(n * ratio), seed).tolist() == expected


@pytest.mark.parametrize("rounds_hint", [coreset.CORESET_ROUNDS_HINT, 20])
def test_greedy_coreset_batched_radius_close_to_exact(monkeypatch, rounds_hint):
    """Several centres per pass (3 with the shipped constants, 15 with 20 passes) cover the data nearly as
    tightly as exact greedy. (Ratio 0.1, not 0.05: at 150 centres the shipped constants give 1 per pass.)"""
    monkeypatch.setattr(coreset, "CORESET_ROUNDS_HINT", rounds_hint)
    n, ratio, seed = 3000, 0.1, 2
    target = math.ceil(n * ratio)
    per_round = max(1, min(coreset.CORESET_MAX_PER_ROUND, target // rounds_hint))
    assert per_round > 1  # the batched path is the one measured
    feats = _clustered(n, 8, clusters=12, seed=seed)
    batched = greedy_coreset(feats, target, seed)
    first = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    exact = _reference_greedy(feats, target, first)
    r_batched = _covering_radius(feats, batched)
    r_exact = _covering_radius(feats, torch.tensor(exact))
    assert batched.numel() == target
    assert r_batched <= 1.5 * r_exact, (r_batched, r_exact)


@pytest.mark.parametrize("seed", [0, 3])
def test_greedy_coreset_bfloat16_screen_selects_exactly_what_float32_does(monkeypatch, seed):
    """The screen only skips rows its error bound rules out, so the coreset is the float32 one, row for row
    (off-centre clusters: large norms, where a loose bound would show)."""
    monkeypatch.setattr(coreset, "CORESET_ROUNDS_HINT", 10)
    feats = (_clustered(4000, 24, clusters=10, seed=seed) + 30.0).float()
    screened = greedy_coreset(feats, 400, seed, screen=True)
    plain = greedy_coreset(feats, 400, seed, screen=False)
    assert torch.equal(screened, plain)


def test_bfloat16_screen_keeps_every_row_that_improves_and_skips_most_others():
    """Gaussian rows, as real patch features are spread (on magnetic_tile about 1 row in 20 is flagged)."""
    g = torch.Generator().manual_seed(11)
    rows = torch.randn(20000, 32, generator=g) + 5.0
    rows = rows - rows.mean(dim=0)
    rows_sq = (rows * rows).sum(dim=1)
    old_centres = rows[torch.randperm(20000, generator=g)[:500]]
    min_d2 = torch.cdist(rows, old_centres).min(dim=1).values ** 2
    new = torch.randperm(20000, generator=g)[:64]
    exact = torch.cdist(rows.double(), rows[new].double()).min(dim=1).values ** 2
    improves = (exact < min_d2.double()).nonzero().squeeze(1)
    flagged = coreset._screen(coreset._screen_layout(rows, rows_sq), rows_sq, min_d2, rows[new], rows_sq[new])
    assert improves.numel() > 1000
    assert set(improves.tolist()) <= set(flagged.tolist())
    # 3,283 of 20,000 when written (2,563 improve); with no error bound at all 4 improving rows are missed.
    assert flagged.numel() < 0.2 * rows.shape[0], flagged.numel()


@pytest.mark.parametrize("rows", [23, 30])
def test_greedy_coreset_of_all_rows_keeps_everything(rows):
    feats = torch.randn(23, 5, generator=torch.Generator().manual_seed(0))
    assert greedy_coreset(feats, rows, seed=0).tolist() == list(range(23))
    assert rows_for_ratio(23, 1.5) == 23


def test_greedy_coreset_refuses_zero_rows():
    with pytest.raises(ValueError, match="at least one row"):
        greedy_coreset(torch.zeros(5, 2), 0, seed=0)


# --------------------------------------------------------------------------- scoring graph


@pytest.mark.parametrize("pretrained", [False, True])
def test_image_score_is_papers_reweighted_max_patch_score(pretrained, train_images):
    if pretrained and not _mobilenet_weights_present():
        pytest.skip("mobilenet_v2 ImageNet weights not in the torch hub cache")
    detector = VisionPatchCore(_params(pretrained=pretrained), CPU).fit(train_images)
    k = detector.params.num_neighbors
    test = _grey_images(5, seed=11)
    test[0, :16, :16] = 255
    test[1, 40:56, 20:36] = (200, 30, 30)
    scores, maps = detector.score_batch(test)
    assert scores.shape == (5,) and scores.dtype == np.float32

    feats, patch_scores, nearest = _patch_scores_reference(detector, test)
    bank = detector.memory_bank_.double()
    bank_dist = torch.cdist(bank, bank)
    expected, weights = [], []
    for i in range(len(test)):
        worst = int(patch_scores[i].argmax())
        s_star = float(patch_scores[i, worst])
        m_star = int(nearest[i, worst])
        support = bank_dist[m_star].argsort()[:k]
        assert int(support[0]) == m_star
        dists = torch.linalg.norm(feats[i, worst] - bank[support], dim=1)
        w = 1.0 - float(torch.softmax(dists, dim=0)[0])
        weights.append(w)
        expected.append(w * s_star)
    np.testing.assert_allclose(scores, np.array(expected), rtol=1e-4)
    if pretrained:
        # Real features make the weight informative (not the uniform-softmax value 1 - 1/k), so a wrong
        # support set or a missing reweighting would show beyond the tolerance above.
        assert max(abs(w - (1.0 - 1.0 / k)) for w in weights) > 1e-2

    plain = VisionPatchCore(_params(pretrained=pretrained, num_neighbors=1), CPU)
    plain.load_state(*detector.state())
    plain_scores, plain_maps = plain.score_batch(test)
    np.testing.assert_allclose(plain_scores, patch_scores.max(dim=1).values.numpy(), rtol=1e-4)
    np.testing.assert_array_equal(plain_maps, maps)  # the map does not depend on num_neighbors


def test_num_neighbors_larger_than_bank_is_capped(train_images):
    """k above the bank size behaves as k = bank rows (softmax over the whole bank, m* first)."""
    small = VisionPatchCore(_params(coreset_ratio=0.01, num_neighbors=50), CPU).fit(train_images)
    rows = small.memory_bank_.shape[0]
    assert rows == math.ceil(len(train_images) * 64 * 0.01) < 50
    test = _grey_images(2, seed=12)
    scores, _ = small.score_batch(test)
    feats, patch_scores, nearest = _patch_scores_reference(small, test)
    bank = small.memory_bank_.double()
    expected = []
    for i in range(2):
        worst = int(patch_scores[i].argmax())
        m_star = int(nearest[i, worst])
        order = torch.cdist(bank[m_star : m_star + 1], bank)[0].argsort()
        dists = torch.linalg.norm(feats[i, worst] - bank[order], dim=1)
        expected.append((1.0 - float(torch.softmax(dists, 0)[0])) * float(patch_scores[i, worst]))
    np.testing.assert_allclose(scores, expected, rtol=1e-4)


def test_anomaly_map_shape_location_and_reference(fitted):
    test = _grey_images(4, seed=21)
    corners = [(slice(0, 16), slice(0, 16)), (slice(0, 16), slice(48, 64)),
               (slice(48, 64), slice(0, 16)), (slice(48, 64), slice(48, 64))]
    for image, (rows, cols) in zip(test, corners):
        image[rows, cols] = 255
    _, maps = fitted.score_batch(test)
    assert maps.shape == (4, HW, HW) and maps.dtype == np.float32

    _, patch_scores, _ = _patch_scores_reference(fitted, test)
    side = int(round(math.sqrt(patch_scores.shape[1])))
    assert side * side == patch_scores.shape[1] == 64  # stride-8 grid of a 64x64 input
    grids = patch_scores.reshape(4, side, side).numpy()

    from scipy.ndimage import gaussian_filter
    import cv2

    for i in range(4):
        # The worst patch lies in the pasted corner, and so does the map's peak.
        pr, pc = np.unravel_index(grids[i].argmax(), grids[i].shape)
        mr, mc = np.unravel_index(maps[i].argmax(), maps[i].shape)
        expected_quadrant = (i // 2, i % 2)
        assert (pr >= side // 2, pc >= side // 2) == expected_quadrant
        assert (mr >= HW // 2, mc >= HW // 2) == expected_quadrant
        # Full map: bilinear upsampling (half-pixel centres) then a sigma-4 Gaussian, mirrored borders.
        up = cv2.resize(grids[i], (HW, HW), interpolation=cv2.INTER_LINEAR)
        ref = gaussian_filter(up, sigma=MAP_SIGMA, mode="mirror", truncate=4.0)
        np.testing.assert_allclose(maps[i], ref, rtol=1e-3, atol=1e-4 * float(grids[i].max()))


def test_same_seed_same_bank_and_scores(train_images):
    a = VisionPatchCore(BASE_PARAMS, CPU).fit(train_images)
    torch.manual_seed(12345)  # unrelated global RNG use between the two builds must not matter
    torch.randn(100)
    b = VisionPatchCore(BASE_PARAMS, CPU).fit(train_images)
    assert a.memory_bank_.shape == (192, 128)  # 6 images x 64 patches x 0.5, mobilenet 32 + 96 channels
    torch.testing.assert_close(a.memory_bank_, b.memory_bank_, rtol=0, atol=0)
    test = _grey_images(3, seed=31)
    sa, ma = a.score_batch(test)
    sb, mb = b.score_batch(test)
    np.testing.assert_array_equal(sa, sb)
    np.testing.assert_array_equal(ma, mb)


# --------------------------------------------------------------------------- backbones


def test_resolve_weights_missing_cache_names_file_and_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    spec = get_backbone_spec("resnet18")
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights(spec, None)
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "weights_path" in message
    assert isinstance(info.value, FileNotFoundError)


def test_resolve_weights_explicit_missing_path_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    missing = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(WeightsNotFoundError, match="weights_path") as info:
        resolve_weights(get_backbone_spec("resnet18"), str(missing))
    assert str(missing) in str(info.value)
    present = tmp_path / "mine.pth"
    present.write_bytes(b"x")
    assert resolve_weights(get_backbone_spec("resnet18"), str(present)) == present


def test_build_feature_extractor_unknown_layer_lists_defaults():
    spec = get_backbone_spec("mobilenet_v2")
    with pytest.raises(ValueError) as info:
        build_feature_extractor(spec, ("features.6", "layer3"), False, None, 0)
    message = str(info.value)
    assert "layer3" in message
    for layer in spec.default_layers:
        assert layer in message
    with pytest.raises(ValueError, match="unknown backbone"):
        get_backbone_spec("vgg_nonexistent")


def test_build_feature_extractor_output_shapes():
    extractor, digest = build_feature_extractor(get_backbone_spec("mobilenet_v2"), ("features.6", "features.13"), False, None, 0)
    assert digest is None
    out = extractor(torch.zeros(2, 3, HW, HW))
    assert tuple(out["features.6"].shape) == (2, 32, HW // 8, HW // 8)
    assert tuple(out["features.13"].shape) == (2, 96, HW // 16, HW // 16)


# --------------------------------------------------------------------------- registry


def test_register_model_duplicate_name_raises():
    before = registry.get_model("vision_patchcore")
    duplicate = registry.ModelEntry(
        name="vision_patchcore", description="impostor", presets={}, default_preset="x",
        detector="pyimgano.models.patchcore:VisionPatchCore", resolve=lambda *a: None, capabilities=registry.Capabilities(),
    )
    with pytest.raises(ValueError, match="already registered"):
        registry.register_model(duplicate)
    assert registry.get_model("vision_patchcore") is before
    assert [e.name for e in registry.list_models()].count("vision_patchcore") == 1
    with pytest.raises(ConfigError, match="model.name"):
        registry.get_model("no_such_model")


def test_resolve_patchcore_presets_fill_only_unset_keys():
    contract = InputContract(height=96, width=80)
    params = patchcore_spec.resolve_patchcore(ModelConfig(preset="industrial-fast", coreset_ratio=0.3), contract, seed=7)
    assert params.coreset_ratio == 0.3
    assert params.backbone == "mobilenet_v2"
    assert params.num_neighbors == 9
    assert params.embed_dim == 1024
    assert params.layers == ("features.6", "features.13")
    assert params.input_hw == (96, 80)
    assert params.seed == 7
    assert params.mean == contract.mean and params.std == contract.std

    explicit = patchcore_spec.resolve_patchcore(
        ModelConfig(preset="industrial-accurate", backbone="resnet18", num_neighbors=1, embed_dim=64, layers=["layer1"]),
        contract,
        seed=0,
    )
    assert explicit.backbone == "resnet18" and explicit.layers == ("layer1",)
    assert explicit.num_neighbors == 1 and explicit.embed_dim == 64
    assert explicit.coreset_ratio == patchcore_spec.PATCHCORE_PRESETS["industrial-accurate"]["coreset_ratio"]

    default = patchcore_spec.resolve_patchcore(ModelConfig(), contract, seed=0)
    assert default.coreset_ratio == patchcore_spec.PATCHCORE_PRESETS["industrial-balanced"]["coreset_ratio"]


def test_resolve_patchcore_unknown_preset_and_backbone():
    contract = InputContract(height=64, width=64)
    with pytest.raises(ConfigError, match="model.preset") as info:
        patchcore_spec.resolve_patchcore(ModelConfig(preset="industrial-magic"), contract, seed=0)
    assert "industrial-magic" in str(info.value)
    with pytest.raises(ConfigError, match="model.backbone") as info:
        patchcore_spec.resolve_patchcore(ModelConfig(backbone="vgg16"), contract, seed=0)
    assert "vgg16" in str(info.value)


# --------------------------------------------------------------------------- fitted state


def test_unfitted_detector_refuses_to_score():
    detector = VisionPatchCore(BASE_PARAMS, CPU)
    with pytest.raises(NotFittedError, match="not fitted") as info:
        detector.graph()
    assert "fit()" in str(info.value)
    with pytest.raises(NotFittedError, match="not fitted"):
        detector.score_batch(_grey_images(1, seed=0))
    with pytest.raises(NotFittedError):
        detector.state()
    assert detector.describe()["memory_bank_rows"] is None


def test_checkpoint_round_trip_and_width_mismatch(fitted, tmp_path):
    folder = tmp_path / "ckpt" / "model.npz"
    assert checkpoint.save(folder, fitted) == folder
    assert folder.is_file() and folder.with_suffix(".json").is_file()

    fresh = VisionPatchCore(BASE_PARAMS, CPU)
    assert checkpoint.load_into(fresh, folder) is fresh
    torch.testing.assert_close(fresh.memory_bank_, fitted.memory_bank_, rtol=0, atol=0)
    assert fresh.patches_seen_ == fitted.patches_seen_ == 6 * 64
    test = _grey_images(3, seed=41)
    s0, m0 = fitted.score_batch(test)
    s1, m1 = fresh.score_batch(test)
    np.testing.assert_array_equal(s0, s1)
    np.testing.assert_array_equal(m0, m1)

    narrow = VisionPatchCore(_params(layers=("features.6",)), CPU)
    assert narrow.feature_dim == 32 != fitted.feature_dim
    with pytest.raises(checkpoint.CheckpointError, match="feature width 32"):
        checkpoint.load_into(narrow, folder)
    assert not hasattr(narrow, "memory_bank_")

    with pytest.raises(checkpoint.CheckpointError, match="cannot read"):
        checkpoint.load_into(VisionPatchCore(BASE_PARAMS, CPU), tmp_path / "missing.npz")
