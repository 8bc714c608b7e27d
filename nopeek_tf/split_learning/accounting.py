"""What a split client counts of what left it: the bytes each way, and the bits each training image may
have given the server.

**Bytes** (:class:`Traffic`): every serialized gRPC message, the training steps' apart (activations, labels,
gradients), the hijack probes' apart again (:mod:`nopeek_tf.split_learning.guard`).

**Bits** (:class:`SendLog`): each epoch a client starts sends every one of its training images once, with
fresh device noise (a re-trained epoch after a lost connection too). One send carries at most
``bound_bits`` about the image (:mod:`nopeek_tf.device.bound`) at the noise in force then: during a noise
warm-up (``--device_noise_warmup_epochs``) that is the wire's own limit, during a ramp the epoch's smallest
noise. The weights change at every step, so two sends of one image go through different functions and
their noises cannot be pooled into one tighter view: the most the server can hold about an image after E
sends is the sum of their bounds (k Gaussian channels used E times). The probes resend a message already
sent, which adds nothing. The log lives beside the checkpoints, so a restarted client counts the sends of
its earlier runs, finished or not.

No TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import os

from nopeek_tf import files
from nopeek_tf.device import bound as bound_lib

STEP_METHODS = ("Step", "Forward", "Backward")
SEND_LOG_FILE = "training_sends.json"  # in the client's checkpoint folder


@dataclasses.dataclass
class Traffic:
    """Bytes this client sent and received (serialized gRPC messages), and the steps they carried."""

    sent: int = 0
    received: int = 0
    steps: int = 0
    step_bytes: int = 0  # of the training steps' messages alone (activations, labels, gradients)
    probe_bytes: int = 0  # of the hijack probes': steps that train nothing on this client

    def add(self, method: str, request, response, probe: bool = False) -> None:
        """Counts one call's request and response."""
        sent, received = request.ByteSize(), response.ByteSize()
        self.sent += sent
        self.received += received
        if probe:
            self.probe_bytes += sent + received
        elif method in STEP_METHODS:
            self.step_bytes += sent + received


def traffic_report(history: list[dict], half_values: int, model_values: int) -> dict:
    """Bytes per step and per epoch on the network (from the epochs' records), beside what federated averaging
    would send. ``half_values``: the numbers in the client half handed over; ``model_values``: in both halves."""
    epochs = [record for record in history if record["steps"]]
    per_epoch = (sum(r["bytes_sent"] + r["bytes_received"] for r in epochs) / len(epochs)) if epochs else None
    steps = sum(r["steps"] for r in epochs)
    step_bytes = sum(r["step_bytes"] for r in epochs)
    return {"bytes_per_epoch": per_epoch, "bytes_per_step": step_bytes / steps if steps else None,
            "probe_bytes_per_epoch": sum(r.get("probe_bytes", 0) for r in epochs) / len(epochs) if epochs else None,
            "client_half_bytes": 4 * half_values,
            # FedAvg: each round a client downloads and uploads the whole model in float32.
            "fedavg_bytes_per_round": 2 * 4 * model_values}


class SendLog:
    """The bound of every send of a training image so far, kept in ``folder`` across restarts.

    Args:
      folder: the client's checkpoint folder.
      values: the numbers sent per image (k).
      wire: the training wire (float32, float16, int8).
      stddev, clip: the device noise at full strength (0 and None: no noise).
    """

    def __init__(self, folder: str, values: int, wire: str, stddev: float = 0.0, clip: float | None = None):
        self.path = os.path.join(folder, SEND_LOG_FILE)
        self.values, self.wire, self.stddev, self.clip = values, wire, stddev, clip
        self.sends: list[dict] = []
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.sends = json.load(f)["sends"]

    def bits_per_send(self, noise_scale: float = 1.0) -> float:
        """The bound of one send at ``noise_scale`` times the full noise (0: the wire's own limit)."""
        return bound_lib.bound_bits(self.values, self.wire, self.stddev * noise_scale, self.clip)

    def epoch_started(self, epoch: int, noise_scale: float = 1.0) -> None:
        """Records that ``epoch`` (0-based) sends every training image once, at ``noise_scale`` (its smallest)."""
        self.sends.append({"epoch": epoch + 1, "noise_scale": noise_scale,
                           "bits": round(self.bits_per_send(noise_scale), 4)})
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        files.write_json(self.path, {"sends": self.sends})

    def report(self) -> dict:
        """metrics.json's entries: sends per image, the bound per send at full noise, and the total."""
        return {"training_sends_per_image": len(self.sends), "bound_bits_per_send": round(self.bits_per_send(), 4),
                "training_bits_per_image": round(sum(send["bits"] for send in self.sends), 4)}
