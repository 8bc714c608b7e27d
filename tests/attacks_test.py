"""Reconstruction attacks: they succeed on a leaky client, fail on a blind one, and are scored honestly."""

import keras
import numpy as np
import pytest

from nopeek_tf import attacks, data


@pytest.fixture(scope="module")
def faces():
    """ORL faces at 28x23 (train, test images in [0, 1] and labels)."""
    raw = data.load("orl_faces")

    def arrays(split):
        images, labels = next(iter(data.make_pipeline(split, 400, False, 0, image_size=(28, 23))))
        return images.numpy(), labels.numpy()

    return arrays(raw.train), arrays(raw.test)


def _pooling_client():
    """A leaky client: 2x2 average pooling (most of the image survives)."""
    image = keras.Input((28, 23, 1))
    return keras.Model(image, keras.layers.AveragePooling2D(2)(image))


TINY = attacks.AttackBudget(decoder_epochs=8, decoder_batch_size=32, decoder_width=16,
                            inversion_images=8, inversion_steps=150, inversion_learning_rate=0.1)


def test_metrics():
    images = np.random.default_rng(0).uniform(size=(4, 28, 23, 1)).astype(np.float32)
    mse, psnr, ssim = attacks.image_metrics(images, images)
    assert mse == 0.0 and psnr == 100.0 and ssim == pytest.approx(1.0)
    _, psnr_noisy, ssim_noisy = attacks.image_metrics(images, np.clip(images + 0.2, 0, 1))
    assert psnr_noisy < 30 and ssim_noisy < 0.95


@pytest.mark.slow
def test_attacks_reconstruct_a_leaky_client_and_not_a_blind_one(faces):
    (train_x, _), (test_x, test_y) = faces
    leaky = _pooling_client()
    report = attacks.run_attacks(attacks.AttackInput(
        client=lambda x: leaky.predict(x, verbose=0), client_model=leaky,
        train_images=train_x, test_images=test_x, test_labels=test_y), TINY)
    by_name = {r.attack: r for r in report.results}
    assert set(by_name) == set(attacks.ATTACKS)
    assert by_name["inversion"].ssim > 0.6 and by_name["public_client"].ssim > 0.4
    assert report.worst.ssim == max(r.ssim for r in report.results)
    assert by_name["leaked_pairs"].scored_images == by_name["public_client"].scored_images == 12
    assert "leaked test pairs" in by_name["leaked_pairs"].budget
    assert report.to_json()["worst_attack"] == report.worst.attack

    rng = np.random.default_rng(0)
    blind = attacks.run_attacks(attacks.AttackInput(
        client=lambda x: rng.normal(size=(len(x), 14, 12, 1)).astype(np.float32), client_model=None,
        train_images=train_x, test_images=test_x, test_labels=test_y), TINY, attacks=("leaked_pairs",))
    assert blind.worst.ssim < report.worst.ssim - 0.2


def test_recognizer_scores_reconstructions(faces):
    (train_x, train_y), (test_x, test_y) = faces

    class Oracle(keras.Model):  # "recognises" an image by its nearest test image's label
        def call(self, x):
            distances = keras.ops.sum((x[:, None] - test_x[None]) ** 2, axis=(2, 3, 4))
            return keras.ops.one_hot(keras.ops.take(test_y, keras.ops.argmin(distances, axis=1)), 40)

    leaky = _pooling_client()
    report = attacks.run_attacks(attacks.AttackInput(
        client=lambda x: leaky.predict(x, verbose=0), client_model=leaky, train_images=train_x,
        test_images=test_x, test_labels=test_y, recognizer=Oracle()), TINY, attacks=("inversion",))
    assert report.results[0].recognized_accuracy > 0.5


def test_quick_attack_and_callback(faces):
    (train_x, train_y), (test_x, _) = faces
    assert attacks.quick_attack_ssim(test_x, test_x) > 0.5  # 60 pairs: a projection, not the identity
    noise = np.random.default_rng(0).normal(size=(len(test_x), 50))
    assert attacks.quick_attack_ssim(noise, test_x) < 0.3
    leaky = _pooling_client()
    model = keras.Sequential([leaky, keras.layers.Flatten(), keras.layers.Dense(40)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(train_x, train_y, epochs=1, verbose=0,
                        callbacks=[attacks.LeakageCallback(leaky, test_x, dcor_batch_size=60)]).history
    assert history["test_dcor"][0] > 0.5 and history["quick_attack_ssim"][0] > 0.5


def test_unknown_attack():
    with pytest.raises(ValueError, match="unknown attacks"):
        attacks.run_attacks(attacks.AttackInput(lambda x: x, None, np.zeros((2, 4, 4, 1)), np.zeros((4, 4, 4, 1)),
                                                np.zeros(4)), attacks=("telepathy",))


def test_leakage_script_writes_the_privacy_card_the_exporter_copies(trained_dir, tmp_path):
    import json
    import os
    import shutil

    from export import export
    from train import leakage

    model_dir = str(tmp_path / "model")
    shutil.copytree(trained_dir, model_dir)
    tiny = attacks.AttackBudget(decoder_epochs=1, decoder_width=8, inversion_steps=5, inversion_images=4)
    result = leakage.evaluate_leakage(model_dir, budget=tiny, train_images=64, test_images=60,
                                      recognizer_epochs=1)
    written = json.load(open(os.path.join(model_dir, "leakage.json")))
    assert written["worst_ssim"] == max(a["ssim"] for a in written["attacks"]) == result["worst_ssim"]
    assert {a["attack"] for a in written["attacks"]} == set(attacks.ATTACKS)
    assert os.path.getsize(os.path.join(model_dir, "reconstructions.png")) > 1000
    manifest = export.export_model(export.ExportConfig(model_dir=model_dir, export_dir=str(tmp_path / "export"),
                                                       variants=("float32",), parity_images=10), log=lambda *_: None)
    assert manifest.privacy["worst_attack"] == written["worst_attack"]
    assert manifest.privacy["worst_ssim"] == written["worst_ssim"]
