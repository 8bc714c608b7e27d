"""The device contract an export writes: ``manifest.json``, the noise the device adds and the privacy card
(the bound in bits, the attacks' verdict)."""

from __future__ import annotations

import os

from nopeek_tf.device import manifest as manifest_lib
from nopeek_tf import model_dir as model_dir_lib
from nopeek_tf.device import bound as bound_lib

from .staging import CLIENT_DIR, ExportImages

# The exporter warns when the worst attack's SSIM exceeds the label-only floor by more than this
# (README, "Leakage"): above it, the activations show more of the image than the class does.

EXCESS_WARNING = 0.10


# The int8 wire of a noisy client covers [-(clip + WIRE_NOISE_STDDEVS * stddev), +...]: the noise is rarely cut.
WIRE_NOISE_STDDEVS = 4.0


TRAINING_KEYS = ("training_sends_per_image", "training_bits_per_image")  # a split client's (split_learning.accounting)


def privacy_card(model_dir: str, bound: dict, metrics: dict | None = None) -> dict:
    """What the client can leak: the bound in bits (always); for a client trained by split training, the most
    bits each of its training images may have given the server; and, from <model_dir>/leakage.json
    (python -m train.leakage), what the attacks reconstructed."""
    card = dict(bound)
    card.update({key: metrics[key] for key in TRAINING_KEYS if metrics and key in metrics})
    leakage = model_dir_lib.read_leakage(model_dir)
    if leakage is None:
        return card
    card.update({key: leakage.get(key) for key in ("worst_attack", "worst_ssim", "worst_psnr", "floor_ssim",
                                                   "excess_ssim", "test_dcor", "dcor_batch_size", "client")})
    card["budget"] = {"train_images": leakage.get("train_images"), "test_images": leakage.get("test_images"),
                      **{attack["attack"]: attack["budget"] for attack in leakage.get("attacks", [])}}
    return card


def bound_verdict(card: dict) -> str:
    """One line on the bound in bits; a warning when it is no lower than what the wire format carries anyway."""
    verdict = (f"bound: one request reveals at most {card['bound_bits']:.2f} bits about the image "
               f"({card['sent_values']} values on a {card['bound_wire']} wire; the class takes "
               f"{card['label_bits']:.2f})")
    wire_limit = bound_lib.bound_bits(card["sent_values"], card["bound_wire"])
    if card["bound_bits"] >= wire_limit:
        return (f"warning: {verdict}: no bound below the wire format's own; train with --bottleneck=K --bounded "
                "--device_noise=S for one")
    return verdict


def privacy_verdict(card: dict, model_dir: str) -> list[str]:
    """Lines on what the exported client leaks: the bound, then the attacks (a warning without an evaluation
    or above EXCESS_WARNING)."""
    lines = [bound_verdict(card)]
    if "training_bits_per_image" in card:
        lines.append(f"split training: each training image was sent {card['training_sends_per_image']} times; at most "
                     f"{bound_lib.bits_text(card['training_bits_per_image'])} bits about it reached the server")
    if card.get("worst_attack") is None:
        lines.append(f"warning: {model_dir} has no leakage evaluation: the manifest's privacy card holds only the "
                     f"bound; run python -m train.leakage --model_dir={model_dir} before shipping this client")
    elif card.get("excess_ssim") is None:
        lines.append(f"warning: {model_dir}'s leakage evaluation predates the label-only floor; run python -m "
                     f"train.leakage --model_dir={model_dir} again")
    else:
        verdict = (f"privacy card: worst attack {card['worst_attack']} SSIM {card['worst_ssim']:.3f}, label-only "
                   f"floor {card['floor_ssim']:.3f}, excess {card['excess_ssim']:+.3f}")
        if card["excess_ssim"] > EXCESS_WARNING:
            verdict = (f"warning: {verdict}: above {EXCESS_WARNING:g}, the activations this client sends show more "
                       "of the image than its class does")
        lines.append(verdict)
    return lines


def manifest_noise(split) -> manifest_lib.Noise | None:
    """The manifest's noise for a model trained with device noise, else None."""
    if split.device_noise is None:
        return None
    return manifest_lib.Noise(kind="gaussian", stddev=split.device_noise.stddev, clip=split.device_noise.clip)


def wire_quantization(noise: manifest_lib.Noise) -> manifest_lib.Quantization:
    """The int8 wire of a noisy client: symmetric, over clip + WIRE_NOISE_STDDEVS noise stddevs."""
    return manifest_lib.Quantization(scale=(noise.clip + WIRE_NOISE_STDDEVS * noise.stddev) / 127.0, zero_point=0)


def export_bound(split, metrics: dict, clients: dict[str, manifest_lib.ClientModel]) -> dict:
    """The bound of the exported clients: the largest over their wire formats (a float32 wire carries the most)."""
    reports = [split.bound_report(int(metrics["num_classes"]), client.wire_dtype) for client in clients.values()]
    return max(reports, key=lambda report: report["bound_bits"])


def write_manifest(model_dir: str, split, metrics: dict, images: ExportImages,
                   clients: dict[str, manifest_lib.ClientModel], noise: manifest_lib.Noise | None, model_name: str,
                   version: int, folder: str, log=print) -> manifest_lib.Manifest:
    """Writes the manifest of the exported ``clients`` to ``folder`` and logs the privacy verdict."""
    manifest = manifest_lib.Manifest(
        model_name=model_name, server_version=version, dataset=metrics["dataset"],
        class_names=list(metrics["class_names"]), arch=metrics.get("network", metrics["arch"]), cut=metrics["cut"],
        alpha=float(metrics["alpha"]), preprocessing=images.preprocessing,
        activation_shape=list(metrics["activation_shape"]), clients=clients,
        source_metrics={key: metrics[key] for key in ("test_accuracy", "test_dcor", "dcor_batch_size")},
        privacy=privacy_card(model_dir, export_bound(split, metrics, clients), metrics), noise=noise)
    for line in privacy_verdict(manifest.privacy, model_dir):
        log(line)
    manifest.save(folder)
    return manifest


def install_client(staging: str, export_dir: str) -> str:
    """Moves the staged client folder into place (the previous one into the staging folder); returns its path."""
    client_dir = os.path.join(export_dir, CLIENT_DIR)
    if os.path.exists(client_dir):
        os.rename(client_dir, os.path.join(staging, "previous_client"))
    os.rename(os.path.join(staging, CLIENT_DIR), client_dir)
    return client_dir
