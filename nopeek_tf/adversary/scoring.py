"""How well an attacking server did, scored on the clients' own training images.

The attacking server (:mod:`nopeek_tf.adversary.server`) kept, for every training message, the decoder's
reconstruction of the batch or the gradient the client returned. The scorer rebuilds the client's
batches (the same shuffle the split client draws from its seed and shard) and pairs them with the
messages in order, skipping the client's label probes (a repeat of the batch before). In the plain
layout the server was sent the labels, and they must match the rebuilt batches' labels: a check that the
pairing is right.

Figures, as ``train.leakage`` reports them:

* ``ssim``: of the reconstructions of the last epoch's batches against the images;
  ``label_floor_ssim``: of the mean public image of each image's class; ``excess_ssim``: the difference.
* ``steps_to_success``: the first step at which the mean excess over the 20 batches before reached
  :data:`SUCCESS_EXCESS` (None: never).
* label inference (U-shaped): ``direction_auc`` (cosine similarity of two returned gradients of one
  batch as the score for "same label"), ``cluster_accuracy`` (k-means of the normalised gradients into as
  many clusters as classes, each cluster named by its majority label), and ``norm_auc`` (the gradient's
  norm as the score for one class against the rest, for the class where it works best: Li et al.'s norm
  attack).
"""

from __future__ import annotations

import os
import tempfile

import keras
import numpy as np

from nopeek_tf import training
from nopeek_tf.attacks import class_means, image_metrics
from nopeek_tf.config import TrainConfig
from nopeek_tf.split_learning import protocol
from nopeek_tf.training import data

from .server import CAPTURE_FILE

SUCCESS_EXCESS = 0.1
SUCCESS_WINDOW = 20


def client_batches(config: TrainConfig, shard: int = 0, num_shards: int = 1) -> tuple[list, data.RawSplits]:
    """Every epoch's training batches of a split client, as it drew them: [epoch][batch] = (images, labels)."""
    with tempfile.TemporaryDirectory() as scratch:
        run = training.start_run(config, scratch, protocol.check_split_config)
    train = run.raw.train.shard(num_shards, shard) if num_shards > 1 else run.raw.train
    keras.utils.set_random_seed(run.config.seed)  # as the client does: tf.data's shuffle takes the global seed too
    stream = data.make_pipeline(train, run.config.batch_size, True, run.config.seed)
    epochs = [[(x.numpy(), y.numpy()) for x, y in stream] for _ in range(run.config.epochs)]
    return epochs, run.raw


def regular_messages(capture: dict, client_id: int) -> list[tuple[int, int, int]]:
    """(step, first row, rows) of a client's messages that are not label probes (repeats of the batch before)."""
    rows = np.concatenate([[0], np.cumsum(capture["batch"])])
    kept, previous = [], None
    for index in np.flatnonzero(capture["client"] == client_id):
        digest = capture["hash"][index].tobytes()
        if digest != previous:
            kept.append((int(capture["step"][index]), int(rows[index]), int(capture["batch"][index])))
        previous = digest
    return kept


def auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """The area under the ROC curve of ``scores`` for ``positive`` (Mann-Whitney, ties averaged)."""
    positive = positive.astype(bool)
    if positive.all() or not positive.any():
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    count = positive.sum()
    return float((ranks[positive].sum() - count * (count + 1) / 2) / (count * (len(scores) - count)))


def kmeans(points: np.ndarray, clusters: int, seed: int = 0, iterations: int = 50) -> np.ndarray:
    """Cluster labels of ``points`` (k-means++ start, Lloyd's iterations)."""
    rng = np.random.default_rng(seed)
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, clusters):
        distances = np.min([np.sum((points - c) ** 2, axis=1) for c in centres], axis=0)
        centres.append(points[rng.choice(len(points), p=distances / distances.sum())]
                       if distances.sum() > 0 else points[rng.integers(len(points))])
    centres = np.stack(centres)
    assignment = np.zeros(len(points), int)
    for _ in range(iterations):
        distances = (points ** 2).sum(1)[:, None] - 2 * points @ centres.T + (centres ** 2).sum(1)[None]
        assignment = np.argmin(distances, axis=1)
        for k in range(clusters):
            if np.any(assignment == k):
                centres[k] = points[assignment == k].mean(axis=0)
    return assignment


def label_inference(gradients: np.ndarray, labels: np.ndarray, batches: list[int], num_classes: int) -> dict:
    """The direction and norm attacks on the gradients a U-shaped client returned (rows in ``batches`` order)."""
    norms = np.linalg.norm(gradients, axis=1)
    unit = gradients / np.maximum(norms[:, None], 1e-12)
    same_scores, same_truth, start = [], [], 0
    for size in batches:
        block, truth = unit[start:start + size], labels[start:start + size]
        upper = np.triu_indices(size, 1)
        same_scores.append((block @ block.T)[upper])
        same_truth.append((truth[:, None] == truth[None, :])[upper])
        start += size
    clusters = kmeans(unit, num_classes)
    majority = sum(np.bincount(labels[clusters == k]).max() for k in np.unique(clusters))
    norm_aucs = [a for a in (auc(norms, labels == c) for c in range(num_classes)) if a is not None]
    return {"direction_auc": auc(np.concatenate(same_scores), np.concatenate(same_truth)),
            "cluster_accuracy": float(majority / len(labels)),
            "norm_auc": float(max(max(norm_aucs), 1 - min(norm_aucs))) if norm_aucs else None,
            "chance_accuracy": float(np.bincount(labels).max() / len(labels)),
            "scored_gradients": int(len(labels))}


def score(server_dir: str, config: TrainConfig, client_id: int = 0, shard: int = 0, num_shards: int = 1) -> dict:
    """Scores an attacking server's capture against one client's own training images.

    Args:
      server_dir: the attacking server's model dir (its ``attack_capture.npz``).
      config: the client's training flags.
      client_id, shard, num_shards: which client, and its share of the dataset.

    Returns:
      The figures of the module docstring, with the steps and epochs scored.

    Raises:
      ValueError: the capture does not pair with the client's batches (another client, a resumed run).
    """
    with np.load(os.path.join(server_dir, CAPTURE_FILE)) as saved:
        capture = {key: saved[key] for key in saved.files}
    epochs, raw = client_batches(config, shard, num_shards)
    batches = [batch for epoch in epochs for batch in epoch]
    messages = regular_messages(capture, client_id)
    if len(messages) > len(batches):
        raise ValueError(f"client {client_id}: {len(messages)} messages captured for {len(batches)} batches "
                         "(a resumed or restarted client cannot be paired)")
    per_epoch = len(epochs[0])
    result = {"scored_steps": len(messages), "epochs_captured": int(np.ceil(len(messages) / per_epoch))}
    public_images, public_labels = data.to_arrays(raw.test)
    if "reconstructions" in capture:
        excess, ssims, last = [], [], []
        for index, (step, row, rows) in enumerate(messages):
            images, labels = batches[index]
            if len(capture["labels"]) and not np.array_equal(capture["labels"][row:row + rows], labels):
                raise ValueError(f"step {step}: the labels the server received differ from the client's batch "
                                 f"{index}: the capture does not pair with this client")
            reconstructions = capture["reconstructions"][row:row + rows].astype(np.float32) / 255.0
            ssim = image_metrics(images, reconstructions)[2]
            floor = image_metrics(images, class_means(public_images, public_labels, labels))[2]
            ssims.append(ssim)
            excess.append(ssim - floor)
            if index >= len(messages) - per_epoch:
                last.append((ssim, floor, len(labels)))
        weights = np.array([n for _, _, n in last], float)
        result["ssim"] = float(np.average([s for s, _, _ in last], weights=weights))
        result["label_floor_ssim"] = float(np.average([f for _, f, _ in last], weights=weights))
        result["excess_ssim"] = result["ssim"] - result["label_floor_ssim"]
        rolling = [np.mean(excess[max(0, i - SUCCESS_WINDOW + 1):i + 1]) for i in range(len(excess))]
        success = next((i for i, value in enumerate(rolling) if i >= SUCCESS_WINDOW - 1 and value >= SUCCESS_EXCESS),
                       None)
        result["steps_to_success"] = None if success is None else success + 1
        result["best_rolling_excess"] = float(max(rolling)) if rolling else None
    if "gradients" in capture:
        rows = [(row, n) for _, row, n in messages[-per_epoch:]]
        gradients = np.concatenate([capture["gradients"][row:row + n] for row, n in rows])
        labels = np.concatenate([batches[len(messages) - len(rows) + i][1] for i in range(len(rows))])
        result.update(label_inference(gradients, labels, [n for _, n in rows], raw.info.num_classes))
    return result
