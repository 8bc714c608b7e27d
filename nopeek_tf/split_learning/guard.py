"""What a split client checks of its server: that the gradients serve the task, and that a half handed over is
one its peers made.

**Hijacking** (feature-space hijacking, FSHA: the server answers with the gradient of its own loss, which
pulls what the client sends into a space the server can invert). The check is a *label probe*, in the
manner of SplitGuard (Erdogan et al. 2022): now and then, at moments the server cannot predict, the client
sends the batch it just trained on a second time with every label changed (in the U-shaped layout: the
same activations, and the gradient of its own loss under the changed labels) and does not apply the
answer. A server that trains the task must answer differently (the cross-entropy's gradient at the cut,
``J^T (softmax - onehot(label))``, moves by ``J^T (onehot(label) - onehot(label'))``); a server whose
gradient ignores the labels answers almost the same. The probe's score is the relative change
``|g_probe - g| / (|g_probe| + |g|)``, 0.5 to 1 for a task-trained server from the first step on,
and the client stops after :data:`PROBES_TO_CONVICT` probes in a row below :data:`HIJACK_THRESHOLD`.
A probe repeats a message the server has already seen (the same noisy activations), so it reveals
nothing new about the images; it costs the honest server one step on wrong labels per probe.

Not covered: a server that adds a genuine task gradient to its own (its answers then do depend on the
labels; how far that still hijacks is open), and the substitution of the weights, which the hand-over
tags catch (:func:`accept_halves`).

**Hand-overs**: with a key the clients share (``--peer_key_file``), each half a client submits carries an
HMAC tag (:func:`protocol.half_tag`); a client accepts only halves whose tags verify, of the epoch it
expects, and averages them itself, so the server can relay but not substitute, alter or replay them.

No TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hmac
import os

import numpy as np

from . import protocol

HIJACK_THRESHOLD = 0.2
PROBES_TO_CONVICT = 2


class HijackDetected(RuntimeError):
    """The server's gradients do not depend on the labels: it is not training the task."""


class HandOverRefused(RuntimeError):
    """A client half handed over by the server is not one the clients made."""


def probe_score(gradient: np.ndarray, probe_gradient: np.ndarray) -> float:
    """|g_probe - g| / (|g_probe| + |g|): how much changing every label changed the server's answer (0: not at all)."""
    difference = float(np.linalg.norm(probe_gradient - gradient))
    scale = float(np.linalg.norm(probe_gradient) + np.linalg.norm(gradient))
    return difference / scale if scale > 0 else 0.0


def changed_labels(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Every label moved to another class, uniformly among the others."""
    return ((labels + rng.integers(1, num_classes, size=labels.shape)) % num_classes).astype(labels.dtype)


@dataclasses.dataclass
class HijackGuard:
    """Decides when to probe and keeps the evidence.

    Args:
      every: after the first ``convict_after`` steps (always probed: a hijacker pulls the features from its
        first answer on), one probe per this many steps on average (0: never probe), at random steps from
        the operating system's generator, so that the server cannot tell which steps will be probed.
      threshold: a probe scoring below it counts against the server.
      convict_after: probes in a row below the threshold that stop the client.
    """

    every: int = 50
    threshold: float = HIJACK_THRESHOLD
    convict_after: int = PROBES_TO_CONVICT
    scores: list = dataclasses.field(default_factory=list)
    probe_steps: list = dataclasses.field(default_factory=list)
    rng: np.random.Generator = dataclasses.field(default_factory=lambda: np.random.default_rng(
        int.from_bytes(os.urandom(8), "little")))

    def due(self) -> bool:
        """Whether to probe the step just taken."""
        return self.every > 0 and (len(self.scores) < self.convict_after or self.rng.random() < 1.0 / self.every)

    def record(self, step: int, gradient: np.ndarray, probe_gradient: np.ndarray) -> float:
        """Scores one probe; HijackDetected (its text contains ``hijack`` and the evidence) on conviction."""
        score = probe_score(gradient, probe_gradient)
        self.scores.append(score)
        self.probe_steps.append(step)
        recent = self.scores[-self.convict_after:]
        if len(recent) == self.convict_after and max(recent) < self.threshold:
            raise HijackDetected(
                f"hijack: the server's gradients do not depend on the labels (changing every label of a batch "
                f"changed its answer by {', '.join(f'{s:.3f}' for s in recent)} at steps "
                f"{', '.join(str(s) for s in self.probe_steps[-self.convict_after:])}; a server that trains "
                f"the task answers above {self.threshold:g}); stopped without writing a model")
        return score

    def report(self) -> dict:
        """The probes for metrics.json."""
        return {"hijack_probes": len(self.scores), "hijack_probe_min_score":
                round(min(self.scores), 4) if self.scores else None,
                "hijack_probe_median_score": round(float(np.median(self.scores)), 4) if self.scores else None}


def sign_half(key: bytes | None, sender: int, epoch: int, examples: int, weights: list[np.ndarray]) -> bytes:
    """The tag a client sends with its half (empty without a key)."""
    return protocol.half_tag(key, sender, epoch, examples, weights) if key else b""


def accept_halves(key: bytes, halves, shapes: list[tuple[int, ...]], epochs: tuple[int, ...],
                  not_older_than: tuple[int, int] | None) -> list[np.ndarray] | None:
    """The client half to start from, from the signed halves of a turn: their average weighted by examples.

    Args:
      key: the clients' shared key.
      halves: the turn's ``peer_halves``.
      shapes: this client half's weight shapes.
      epochs: the epochs a half may come from (the previous one under splitfed; this or the previous one under
        sequential).
      not_older_than: (epoch, sender) of this client's own last submission: an older half is a replay.

    Returns:
      The averaged weights, or None when there are no halves (the client keeps its own).

    Raises:
      HandOverRefused: a tag does not verify, or a half is of another epoch or older than this client's own.
    """
    accepted = []
    for half in halves:
        name = f"the client half handed over as client {half.sender}'s of epoch {half.epoch + 1}"
        try:
            weights = protocol.decode_weights(half.weights, shapes)
        except protocol.ProtocolError as error:
            raise HandOverRefused(f"refused {name}: {error}") from None
        expected = protocol.half_tag(key, half.sender, half.epoch, half.examples, weights)
        if not half.tag:
            raise HandOverRefused(f"refused {name}: it carries no tag (its sender has no --peer_key_file, or the "
                                  "server removed it)")
        if not hmac.compare_digest(expected, bytes(half.tag)):
            raise HandOverRefused(f"refused {name}: its HMAC does not match the clients' key (substituted or "
                                  "altered on the way)")
        if half.epoch not in epochs or (not_older_than is not None and (half.epoch, half.sender) < not_older_than):
            raise HandOverRefused(f"refused {name}: expected a half of epoch "
                                  f"{' or '.join(str(e + 1) for e in epochs)}, not older than this client's "
                                  "own (a replay)")
        accepted.append((weights, max(int(half.examples), 1)))
    if not accepted:
        return None
    total = sum(examples for _, examples in accepted)
    return [sum(weights[i] * (examples / total) for weights, examples in accepted).astype(np.float32)
            for i in range(len(shapes))]


def handed_over_weights(turn, shapes: list[tuple[int, ...]], key: bytes | None, schedule: str,
                        own_last_half: tuple[int, int] | None) -> list[np.ndarray] | None:
    """The client half a client loads from a turn (None: keep its own).

    Without a key, the server's ``client_weights`` (checked for shapes only). With one, only the signed
    ``peer_halves`` (:func:`accept_halves`): the server's own weights are never loaded, and a turn that
    hands over weights without signed halves behind them leaves the client with its own.

    Raises:
      HandOverRefused: a half's tag, epoch or shapes do not check out.
    """
    if key is None:
        if not turn.client_weights:
            return None
        try:
            return protocol.decode_weights(turn.client_weights, shapes)
        except protocol.ProtocolError as error:
            raise HandOverRefused(f"refused the client half handed over: {error}") from None
    sequential = schedule == "sequential"
    epochs = (turn.epoch, turn.epoch - 1) if sequential else (turn.epoch - 1,)
    return accept_halves(key, turn.peer_halves, shapes, epochs, own_last_half if sequential else None)


__all__ = ["handed_over_weights", "HijackGuard", "HijackDetected", "HandOverRefused", "accept_halves", "sign_half", "probe_score",
           "changed_labels"]
