"""Cross-fitted calibration (workbench/cross_fit.py) on real images (piped_flr01 at 64x64, random-weight
backbones so no weights file is needed): features extracted once give exactly the out-of-fold scores that
refitting each fold on its images gives; every image is scored by a model that did not see it; the
shipped model is the one fitted on every image."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from conftest import DATA_ROOT, require_data  # noqa: E402
from pyimgano.config import ModelConfig, TrainingConfig  # noqa: E402
from pyimgano.models.registry import get_model  # noqa: E402
from pyimgano.runtime.images import InputContract, expand_inputs, read_rgb  # noqa: E402
from pyimgano.runtime.scoring import MapSteps, model_inputs  # noqa: E402
from pyimgano.workbench.cross_fit import assign_folds, cross_fit  # noqa: E402

CPU = torch.device("cpu")
CONTRACT = InputContract(64, 64)
STEPS = MapSteps(CONTRACT)
CATEGORY = "piped_flr01"


def test_folds_are_seeded_and_balanced():
    folds = assign_folds(32, 5, seed=3)
    assert np.array_equal(folds, assign_folds(32, 5, seed=3))
    assert not np.array_equal(folds, assign_folds(32, 5, seed=4))
    assert sorted(np.bincount(folds)) == [6, 6, 6, 7, 7]
    with pytest.raises(ValueError, match="folds"):
        assign_folds(3, 5, seed=0)


def build(name: str, **model):
    config = ModelConfig(name=name, pretrained=False, batch_size=8, **model)
    return get_model(name).build(config, CONTRACT, 0, CPU)


@pytest.fixture(scope="module")
def images():
    require_data(CATEGORY)
    return [read_rgb(path) for path in expand_inputs(str(DATA_ROOT / CATEGORY / "train" / "good"))][:20]


def fold_reference(name: str, model: dict, batch: np.ndarray, fold_of: np.ndarray, fold: int):
    """Fold `fold`'s model built directly: PaDiM fitted on the other folds' images (its sums add exactly);
    PatchCore's bank the union of each other fold's own coreset."""
    reference = build(name, **model)
    if name == "vision_padim":
        return reference.fit(batch[fold_of != fold])
    parts = [reference.summarise(reference.embed_inputs(batch[fold_of == other])) for other in np.unique(fold_of)
             if other != fold]
    return reference.fit_summaries(parts)


@pytest.mark.realdata
@pytest.mark.parametrize("name, model", [("vision_patchcore", {"coreset_ratio": 0.25}), ("vision_padim", {})])
def test_features_once_equal_fitting_each_fold_directly(images, name, model):
    detector = build(name, **model)
    oof = cross_fit(detector, images, STEPS, folds=4, seed=0, training=TrainingConfig())
    batch = np.concatenate([model_inputs(image, CONTRACT, None) for image in images])
    for fold in range(4):
        held = oof.fold_of == fold
        scores, maps = fold_reference(name, model, batch, oof.fold_of, fold).score_batch(batch[held])
        np.testing.assert_allclose(oof.scores[held], scores, rtol=1e-5)
        np.testing.assert_allclose(np.stack(oof.maps)[held], maps, rtol=1e-4, atol=1e-5)
    in_sample, _ = detector.score_batch(batch)
    if name == "vision_padim":  # the shipped Gaussians are a plain fit on every image
        plain, _ = build(name, **model).fit(batch).score_batch(batch)
        np.testing.assert_allclose(in_sample, plain, rtol=1e-5)
    # Out of fold, every image scores higher than it does against a model that holds it.
    assert np.all(oof.scores > in_sample), (oof.scores, in_sample)


@pytest.mark.realdata
def test_the_composable_bank_covers_the_patches_as_well_as_one_greedy_pass(images):
    """PatchCore's cross-fitted bank is the union of the folds' coresets: as many rows as one greedy pass over
    all patches, and every training patch about as near to it (piped_flr01 at 64x64, 5 folds: mean distance
    0.98x one greedy pass's, the farthest patch 1.17x)."""
    detector = build("vision_patchcore", coreset_ratio=0.1)
    cross_fit(detector, images, STEPS, folds=5, seed=0, training=TrainingConfig())
    batch = np.concatenate([model_inputs(image, CONTRACT, None) for image in images])
    plain = build("vision_patchcore", coreset_ratio=0.1).fit(batch)
    patches = plain.embed(batch)
    assert abs(detector.memory_bank_.shape[0] - plain.memory_bank_.shape[0]) <= 5  # one ceil per fold
    composable = torch.cdist(patches, detector.memory_bank_).min(dim=1).values
    greedy = torch.cdist(patches, plain.memory_bank_).min(dim=1).values
    assert float(composable.mean()) <= 1.05 * float(greedy.mean()), (composable.mean(), greedy.mean())
    assert float(composable.max()) <= 1.25 * float(greedy.max()), (composable.max(), greedy.max())


@pytest.mark.realdata
def test_a_model_that_trains_is_refitted_per_fold(images):
    """The autoencoder has no features to share: each fold trains its own network; the shipped one trains
    on every image."""
    detector = build("vision_autoencoder")
    training = TrainingConfig(enabled=True, epochs=1, lr=1e-3)
    oof = cross_fit(detector, images[:12], STEPS, folds=3, seed=0, training=training)
    assert oof.scores.shape == (12,) and np.all(np.isfinite(oof.scores))
    assert detector.images_seen_ == 12 and detector.epochs_ == 1
    batch = np.concatenate([model_inputs(image, CONTRACT, None) for image in images[:12]])
    held = oof.fold_of == 0
    reference = build("vision_autoencoder").fit(batch[~held], epochs=training.epochs, lr=training.lr)
    np.testing.assert_allclose(oof.scores[held], reference.score_batch(batch[held])[0], rtol=1e-4)
