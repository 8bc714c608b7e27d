r"""The on-device NoPeek client: LiteRT runs the client half; only activations leave the device.

As a command (a Raspberry Pi or a phone-class Linux device; no TensorFlow):

  python -m edge.client --tflite=export/client/client_int8.tflite --server=127.0.0.1:8501 face1.pgm faces/
  python -m edge.client --tflite=export/client --variant=auto --server=127.0.0.1:8501 faces/

As a library:

  client = EdgeClient("export/client/client_int8.tflite", server="127.0.0.1:8500", transport="grpc")
  result = client.classify("face.pgm")   # result.class_name, result.probability, result.device_ms, ...

The manifest beside the .tflite (manifest.json, written by the exporter) says
how to turn an image into the client's input, which server model and signature
take its activations, and the class names. When it has a ``noise`` entry, the
device clips the activations and adds Gaussian noise drawn here (seeded by the
operating system), the same for a repeated image (``nopeek_tf.device.noise``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from typing import Sequence

import numpy as np

from .transport import EdgeError, GrpcTransport, RestTransport, TlsFiles, with_retries
from nopeek_tf.device import bound as bound_lib
from nopeek_tf.device import manifest as manifest_lib
from nopeek_tf.device import policy
from nopeek_tf import runtime
from nopeek_tf.device.litert import ClientRunner, LiteRTModel
from nopeek_tf.device.noise import DeviceNoiseSource
from nopeek_tf import files

IMAGE_EXTENSIONS = (".pgm", ".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".gif", ".tif", ".tiff", ".webp")
VARIANT_CHOICE_FILE = "variant_choice.json"
TIMING_RUNS = 30


def default_state_dir() -> str:
    """Where the device keeps its noise key, its memo and its variant choice: $XDG_CACHE_HOME/nopeek_edge."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nopeek_edge")


def model_state_dir(state_dir: str, manifest: manifest_lib.Manifest) -> str:
    """The state of one exported model (its server model and version) under ``state_dir``."""
    return os.path.join(state_dir, f"{manifest.model_name}-v{manifest.server_version}")


def time_variant(path: str, num_threads: int = 1, runs: int = TIMING_RUNS) -> float:
    """Median milliseconds of one image through the client ``.tflite`` at ``path`` on this device."""
    model = LiteRTModel(path, num_threads=num_threads)
    inputs = np.zeros([1, *model.input_detail["shape"][1:]], model.input_dtype)
    return 1000.0 * runtime.median_seconds(lambda: model(inputs), runs)


def choose_variant(client_dir: str, variant: str = "auto", state_dir: str | None = None, num_threads: int = 1,
                   log=None) -> str:
    """The client ``.tflite`` to run from an export's client folder.

    ``variant="auto"`` times every variant the manifest lists on this device once and picks the
    fastest; with a ``state_dir`` the choice is remembered per model (``variant_choice.json``), so
    later runs do not time again. Any other name picks that variant.

    Raises:
      EdgeError: no manifest in the folder, or the variant is not exported.
    """
    try:
        manifest = manifest_lib.Manifest.load(client_dir)
    except (OSError, ValueError) as error:
        raise EdgeError(f"--tflite {client_dir}: {error}") from None
    if variant != "auto":
        if variant not in manifest.clients:
            raise EdgeError(f"--variant {variant}: not exported (the manifest lists {', '.join(manifest.clients)})")
        return os.path.join(client_dir, manifest.clients[variant].file)
    choice_path = os.path.join(model_state_dir(state_dir, manifest), VARIANT_CHOICE_FILE) if state_dir else None
    if choice_path and os.path.exists(choice_path):
        with open(choice_path) as f:
            remembered = json.load(f)
        if remembered.get("variant") in manifest.clients and remembered.get("threads") == num_threads:
            return os.path.join(client_dir, manifest.clients[remembered["variant"]].file)
    timings = {name: time_variant(os.path.join(client_dir, client.file), num_threads)
               for name, client in manifest.clients.items()}
    fastest = min(timings, key=timings.get)
    if log:
        log("timed the client variants on this device: " + ", ".join(
            f"{name} {ms:.3f} ms" for name, ms in sorted(timings.items(), key=lambda item: item[1]))
            + f"; using {fastest}")
    if choice_path:
        os.makedirs(os.path.dirname(choice_path), exist_ok=True)
        files.write_json(choice_path, {"variant": fastest, "threads": num_threads, "milliseconds": timings})
    return os.path.join(client_dir, manifest.clients[fastest].file)


@dataclasses.dataclass
class Prediction:
    """The answer for one image."""

    class_id: int
    class_name: str
    probability: float
    probabilities: np.ndarray
    device_ms: float
    network_ms: float
    bytes_sent: int


def load_image(source, preprocessing: manifest_lib.Preprocessing) -> np.ndarray:
    """An image (path, PIL image or uint8 array) as uint8 pixels [H, W, C] of the manifest's size.

    Converts to grey or RGB as the manifest says and, when the size differs,
    resizes as the training pipeline does (``manifest.resize_area``).
    """
    from PIL import Image

    if isinstance(source, np.ndarray):
        pixels = source if source.ndim == 3 else source[..., np.newaxis]
        if pixels.dtype != np.uint8:
            raise EdgeError(f"image arrays must be uint8 pixels, got {pixels.dtype}")
        image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    elif isinstance(source, Image.Image):
        image = source
    else:
        try:
            image = Image.open(source)
            image.load()
        except (OSError, ValueError) as error:
            raise EdgeError(f"{source}: not a readable image ({error})") from None
    pixels = np.asarray(image.convert("L" if preprocessing.channels == 1 else "RGB"), np.uint8)
    pixels = pixels[..., np.newaxis] if pixels.ndim == 2 else pixels
    return manifest_lib.resize_area(pixels, preprocessing.image_size)


class EdgeClient:
    """Runs the client half with LiteRT and asks TF Serving for the class.

    Args:
      tflite_path: an exported client .tflite.
      manifest: its manifest (path or object); default manifest.json beside the .tflite.
      server: host:port (or http(s)://host:port for REST).
      transport: "rest" or "grpc".
      model_name: the TF Serving model; default the manifest's.
      model_version: a version to pin; default the manifest's (0 or None: the highest served).
      tls: CA file (enables TLS) and optional client certificate and key.
      timeout: seconds for each call to the server.
      retries: retries of transient failures.
      num_threads: LiteRT threads.
      state_dir: where the device keeps its noise key and memo (a folder per model under it) and its bit
        budget; None keeps them in memory (a new key, and new noise, for each EdgeClient).
      max_bits: the device's own limit on the bits one request may reveal: it adds at least the noise that
        holds it, whatever the manifest says (``nopeek_tf.device.policy``); None: the manifest's noise.
      budget_bits: the bits this device may send about new images in all (a repeated image costs nothing);
        past it, :meth:`classify` raises ``policy.BudgetExhausted`` and sends nothing.

    ``bound_bits`` is the bound of what this device sends, computed from the noise it adds and the values its
    ``.tflite`` outputs; a manifest whose privacy card disagrees with its own noise is refused.
    """

    def __init__(self, tflite_path: str, manifest: str | manifest_lib.Manifest | None = None,
                 server: str = "127.0.0.1:8501", transport: str = "rest", model_name: str | None = None,
                 model_version: int | None = None, tls: TlsFiles | None = None, timeout: float = 10.0,
                 retries: int = 2, num_threads: int = 1, state_dir: str | None = None, max_bits: float | None = None,
                 budget_bits: float | None = None):
        if not os.path.isfile(tflite_path):
            raise EdgeError(f"--tflite {tflite_path}: no such file")
        if manifest is None:
            manifest = os.path.join(os.path.dirname(os.path.abspath(tflite_path)), manifest_lib.MANIFEST_FILE)
        if not isinstance(manifest, manifest_lib.Manifest):
            try:
                manifest = manifest_lib.Manifest.load(manifest)
            except (OSError, ValueError) as error:
                raise EdgeError(f"--manifest: {error}") from None
        self.manifest = manifest
        try:
            self.runner = ClientRunner.from_file(tflite_path, manifest, num_threads=num_threads)
        except ValueError as error:
            raise EdgeError(f"--tflite: {error}") from None
        self.client_model = self.runner.client
        self.noise = None
        values = int(np.prod(self.runner.model.output_detail["shape"][1:]))
        try:
            policy.check_card(manifest, values, self.client_model.wire_dtype)
            noise = policy.enforced_noise(manifest.noise, values, max_bits, self.runner.model.output_op())
            self.bound_bits = bound_lib.bound_bits(values, self.client_model.wire_dtype,
                                                   noise.stddev if noise else 0.0, noise.clip if noise else None)
            if budget_bits is not None and noise is None:
                raise policy.PolicyError("--budget_bits needs a bound per request: a manifest with device noise, "
                                         "or --max_bits")
            self.budget = policy.BitBudget(budget_bits, state_dir) if budget_bits is not None else None
            if noise is not None:
                self.noise = DeviceNoiseSource(noise, model_state_dir(state_dir, manifest) if state_dir else None,
                                               budget=self.budget, bits_per_image=self.bound_bits)
        except policy.PolicyError as error:  # the card's errors name the manifest, the policy's their flag
            raise EdgeError(str(error) if str(error).startswith("--") else f"--manifest: {error}") from None
        except OSError as error:
            raise EdgeError(f"--state_dir {state_dir} cannot be written: {error.strerror or error}") from None
        self.max_bits = max_bits
        self.retries = retries
        name = model_name or manifest.model_name
        version = manifest.server_version if model_version is None else (model_version or None)
        if transport == "rest":
            self.transport = RestTransport(server, name, version, tls, timeout)
        elif transport == "grpc":
            self.transport = GrpcTransport(server, name, version, tls, timeout)
        else:
            raise EdgeError(f"--transport must be rest or grpc, got {transport!r}")

    def activations(self, pixels: np.ndarray) -> np.ndarray:
        """What the device sends for uint8 pixels [N, H, W, C]: the client's activations, with the noise if any."""
        return self.runner.wire_activations(pixels, self.noise)

    def classify(self, image) -> Prediction:
        """Classifies one image (path, PIL image or uint8 array)."""
        pixels = load_image(image, self.manifest.preprocessing)[np.newaxis]
        start = time.perf_counter()
        activations = self.activations(pixels)
        device_ms = (time.perf_counter() - start) * 1000.0
        start = time.perf_counter()
        probabilities = with_retries(
            lambda: self.transport.predict(activations, self.client_model.server_signature), self.retries)[0]
        network_ms = (time.perf_counter() - start) * 1000.0
        class_id = int(np.argmax(probabilities))
        return Prediction(class_id=class_id, class_name=self.manifest.class_names[class_id],
                          probability=float(probabilities[class_id]), probabilities=probabilities,
                          device_ms=device_ms, network_ms=network_ms, bytes_sent=activations.nbytes)


def find_images(paths: Sequence[str]) -> list[str]:
    """The image files among ``paths``, folders searched recursively, in sorted order."""
    images = []
    for path in paths:
        if os.path.isdir(path):
            for folder, _, files in sorted(os.walk(path)):
                images += [os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        elif os.path.isfile(path):
            images.append(path)
        else:
            raise EdgeError(f"{path}: no such file or folder")
    if not images:
        raise EdgeError("no images found in " + ", ".join(paths))
    return images


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m edge.client",
        description="Classify images on the device: LiteRT computes the activations of the NoPeek client "
                    "half and only those go to TF Serving, which runs the server half.")
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--tflite", required=True,
                        help="the exported client .tflite, or the export's client folder (see --variant)")
    parser.add_argument("--variant", default="auto", choices=("auto", *manifest_lib.VARIANTS),
                        help="with a client folder: the variant to run; auto times them on this device once and "
                             "keeps the fastest (remembered per model in --state_dir)")
    parser.add_argument("--state_dir", default=default_state_dir(),
                        help="where the device keeps its noise key, the noise memo and the variant choice")
    parser.add_argument("--manifest", help="its manifest.json (default: beside the .tflite)")
    parser.add_argument("--server", default="127.0.0.1:8501",
                        help="host:port of TF Serving (REST 8501, gRPC 8500), or https://host:port")
    parser.add_argument("--transport", choices=("rest", "grpc"), default="rest")
    parser.add_argument("--model_name", help="TF Serving model name (default: the manifest's)")
    parser.add_argument("--model_version", type=int, help="version (default: the manifest's; 0: the highest)")
    parser.add_argument("--ca_file", help="CA certificate (PEM) of the server: turns TLS on")
    parser.add_argument("--client_cert", help="client certificate (PEM) for mutual TLS")
    parser.add_argument("--client_key", help="client key (PEM) for mutual TLS")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per server call")
    parser.add_argument("--retries", type=int, default=2, help="retries of transient failures")
    parser.add_argument("--threads", type=int, default=1, help="LiteRT threads")
    parser.add_argument("--max_bits", type=float,
                        help="this device's own limit on what one request may reveal about an image, in bits: it "
                             "adds at least the noise that holds it, whatever the manifest says (a client with "
                             "bounded values only)")
    parser.add_argument("--budget_bits", type=float,
                        help="the bits this device may send about new images in all (kept in --state_dir; a "
                             "repeated image costs nothing): past it, no new image is sent")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    runtime.run_from_invocation_directory()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if bool(args.client_cert) != bool(args.client_key):
            raise EdgeError("--client_cert and --client_key go together")
        if (args.client_cert or args.client_key) and not args.ca_file:
            raise EdgeError("--client_cert needs --ca_file (TLS)")
        images = find_images(args.images)
        tflite = args.tflite
        if os.path.isdir(tflite):
            tflite = choose_variant(tflite, args.variant, args.state_dir, max(1, args.threads), log=print)
        client = EdgeClient(tflite, args.manifest, args.server, args.transport, args.model_name,
                            args.model_version, TlsFiles(args.ca_file, args.client_cert, args.client_key),
                            args.timeout, max(0, args.retries), max(1, args.threads), args.state_dir,
                            args.max_bits, args.budget_bits)
        results, withheld = [], []
        for path in images:
            try:
                result = client.classify(path)
            except policy.BudgetExhausted as error:
                withheld.append(path)
                print(f"{path}: {error}", flush=True)
                continue
            results.append(result)
            print(f"{path}: {result.class_name} (p={result.probability:.3f})  device {result.device_ms:.2f} ms, "
                  f"network+server {result.network_ms:.2f} ms, sent {result.bytes_sent} bytes", flush=True)
    except EdgeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if results:
        raw_bytes = int(np.prod(client.manifest.preprocessing.image_size)) * client.manifest.preprocessing.channels
        print(f"{len(results)} images via {args.transport} ({client.client_model.variant} client): device "
              f"{statistics.median(r.device_ms for r in results):.2f} ms, network+server "
              f"{statistics.median(r.network_ms for r in results):.2f} ms (medians); "
              f"{results[0].bytes_sent} bytes sent per image (the raw image has {raw_bytes})")
    print(privacy_line(client))
    if withheld:
        print(f"error: --budget_bits: {len(withheld)} of {len(images)} images not sent: this device's budget of "
              f"{args.budget_bits:g} bits is spent", file=sys.stderr)
        return 1
    return 0


def privacy_line(client: EdgeClient) -> str:
    """What the device enforced: its noise (and where it came from), the bound it computed, its budget."""
    label = (client.manifest.privacy or {}).get("label_bits")
    the_class = f"; the class takes {label:.2f}" if label else ""
    if client.noise is None:
        return (f"no device noise: one request may reveal up to {bound_lib.bits_text(client.bound_bits)} bits about "
                f"an image (the wire's own limit{the_class})")
    bound = (f"one request reveals at most {bound_lib.bits_text(client.bound_bits)} bits about an image (computed "
             f"by this device from the noise it adds{the_class})")
    noise, source = client.noise.noise, "the manifest's"
    if client.max_bits is not None:
        asked = client.manifest.noise.stddev if client.manifest.noise else 0.0
        source = (f"--max_bits={client.max_bits:g} raised the manifest's {asked:g}" if noise.stddev > asked
                  else f"the manifest's, which holds --max_bits={client.max_bits:g}")
    line = (f"device noise: std {noise.stddev:.4g} ({source}) on values clipped to +-{noise.clip:g}, the same for "
            f"a repeated image; {bound}")
    if client.budget is not None:
        line += (f"; budget: {bound_lib.bits_text(client.budget.spent)} of {bound_lib.bits_text(client.budget.limit)}"
                 f" bits spent on {client.budget.images} new images")
    return line

if __name__ == "__main__":
    sys.exit(main())
