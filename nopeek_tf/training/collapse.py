"""A model that learned nothing, caught: test accuracy at chance.

NoPeek's term can win before the task starts (a user's model at ``--alpha=1`` stayed at 0.31-0.46 on three
classes while dCor fell), and an accuracy near chance is then easy to miss in a log line. Every program
that trains (``train.train``, :func:`nopeek_tf.training.train_and_evaluate`, the split client) puts
:func:`collapse_report` into metrics.json and prints :func:`collapse_message`; ``--strict`` makes it an
error; ``export.export`` refuses such a model dir unless ``--force``.

Chance is the share of the test split's largest class (what always naming that class scores). A model is
at chance when its test accuracy is no more than ``max(COLLAPSE_POINTS, 3 standard errors of chance on the
test split)`` above it: 5 points, or more on a small test split where 5 points are within its noise. Where
the same model's accuracy without the defence is known (``--reference_accuracy``), a run more than
``FAR_BELOW_POINTS`` below it is caught the same way: the defence took the task with it.
"""

from __future__ import annotations

import math

import numpy as np

COLLAPSE_POINTS = 0.05
FAR_BELOW_POINTS = 0.20
WHAT_TO_TRY = ("--alpha_warmup_epochs=1 --alpha_ramp_epochs=1 (the task first), a smaller --alpha (e.g. 0.1), more "
               "--epochs, or --alpha=0 to see whether the model trains at all")


class TrainingCollapsed(RuntimeError):
    """``--strict``: the model's test accuracy is at chance; the text says so in one line and what to try."""


def collapse_report(test_accuracy: float, test_labels: np.ndarray, reference_accuracy: float = 0.0) -> dict:
    """metrics.json's entries: ``chance_accuracy``, ``collapse_margin``, ``collapsed`` (at chance, or more than
    :data:`FAR_BELOW_POINTS` below ``reference_accuracy``, the same model's without the defence; 0: unknown)
    and, with a reference, ``reference_accuracy`` and ``far_below_reference``."""
    labels = np.asarray(test_labels).astype(np.int64).ravel()
    counts = np.bincount(labels) if len(labels) else np.zeros(1)
    chance = float(counts.max() / max(len(labels), 1))
    margin = max(COLLAPSE_POINTS, 3.0 * math.sqrt(chance * (1.0 - chance) / max(len(labels), 1)))
    at_chance = test_accuracy <= chance + margin
    far_below = bool(reference_accuracy) and not at_chance and test_accuracy < reference_accuracy - FAR_BELOW_POINTS
    known = {"reference_accuracy": reference_accuracy, "far_below_reference": far_below} if reference_accuracy else {}
    return {"chance_accuracy": round(chance, 4), "collapse_margin": round(margin, 4), **known,
            "collapsed": bool(at_chance or far_below)}


def collapse_message(metrics: dict) -> str | None:
    """One line when metrics.json says the model is at chance or far below its reference (it contains
    ``chance``), else None."""
    if not metrics.get("collapsed"):
        return None
    if metrics.get("far_below_reference"):
        return (f"test accuracy {metrics['test_accuracy']:.4f} is more than {FAR_BELOW_POINTS:.2f} below the "
                f"{metrics['reference_accuracy']:.4f} the same model reaches without the defence "
                f"(--reference_accuracy; chance is {metrics['chance_accuracy']:.4f}): the defence took the task "
                f"with it. Try {WHAT_TO_TRY}")
    return (f"test accuracy {metrics['test_accuracy']:.4f} is at chance ({metrics['chance_accuracy']:.4f}, the largest "
            f"class's share of {metrics.get('num_classes', '?')} classes; within {metrics['collapse_margin']:.2f}): "
            f"the model did not learn the task. Try {WHAT_TO_TRY}")
