"""The pictures a run writes: image grids of reconstructions, the privacy-utility plot and the frontier."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from nopeek_tf import files


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, figure, path: str, dpi: int, pad: float = 1.08) -> None:
    """Lays ``figure`` out, writes it to ``path`` atomically and frees it."""
    figure.tight_layout(pad=pad)
    with files.atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=dpi)
    plt.close(figure)


def save_image_grid(path: str, rows: dict[str, np.ndarray], group_titles: Sequence[str] = (),
                    cell_inches: tuple[float, float] = (1.0, 1.1)) -> None:
    """Writes a PNG with one labelled row of images per entry of ``rows``.

    Args:
      path: the PNG to write (atomically).
      rows: label -> images [columns, H, W, C] in [0, 1]; shorter rows leave blanks.
      group_titles: titles of equal column groups, left to right (e.g. one
        group per attack); empty for none.
      cell_inches: width and height of one image.
    """
    plt = _pyplot()
    columns = max(len(images) for images in rows.values())
    figure, axes = plt.subplots(len(rows), columns, squeeze=False,
                                figsize=(cell_inches[0] * columns + 0.6, cell_inches[1] * len(rows) + 0.3))
    group_size = columns // len(group_titles) if group_titles else columns
    for row_index, (label, images) in enumerate(rows.items()):
        for column in range(columns):
            axis = axes[row_index][column]
            if column < len(images):
                image = images[column]
                axis.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            if row_index == 0 and group_titles and column % group_size == 0:
                axis.set_title(group_titles[column // group_size], fontsize=8, loc="left")
        axes[row_index][0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    _save(plt, figure, path, dpi=100, pad=0.3)


def save_privacy_utility(path: str, rows: list[dict], title: str) -> None:
    """Accuracy against worst-case attack SSIM and against test dCor, one curve per defence.

    Args:
      path: the PNG to write (atomically).
      rows: result rows with ``curve``, ``cut``, ``defence``, ``strength``,
        ``test_accuracy``, ``worst_ssim``, ``test_dcor`` and optionally
        ``label_only_ssim``; each curve starts at its cut's undefended row.
      title: the figure's title.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    undefended = {row["cut"]: row for row in rows if row["defence"] == "nopeek" and row["strength"] == 0}
    curves: dict[str, list[dict]] = {}
    for row in rows:
        curves.setdefault(row["curve"], []).append(row)
    for curve, members in curves.items():
        start = undefended.get(members[0]["cut"])
        points = sorted(members + ([start] if start and start not in members else []), key=lambda r: r["strength"])
        for axis, x in zip(axes, ("worst_ssim", "test_dcor")):
            line, = axis.plot([p[x] for p in points], [p["test_accuracy"] for p in points], "o-", label=curve)
            for point in points:
                axis.annotate(f"{point['strength']:g}", (point[x], point["test_accuracy"]), fontsize=7,
                              textcoords="offset points", xytext=(3, 3), color=line.get_color())
    label_only = [row["label_only_ssim"] for row in rows if row.get("label_only_ssim") is not None]
    if label_only:
        axes[0].axvline(label_only[0], color="grey", linestyle=":", label="label-only floor (excess: the distance to it)")
    axes[0].set_xlabel("worst-case attack SSIM (lower = more private)")
    axes[1].set_xlabel("test dCor(image, activations)")
    for axis in axes:
        axis.set_ylabel("test accuracy")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(title)
    _save(plt, figure, path, dpi=110)


def save_frontier(path: str, rows: list[dict], title: str, labelled: Sequence[str] | None = None,
                  chosen: str | None = None) -> None:
    """Test accuracy against excess leakage over the label-only floor and against the bound in bits, one
    marker per cut.

    Args:
      path: the PNG to write (atomically).
      rows: rows of :func:`nopeek_tf.experiments.frontier.frontier_row` (``cut``, ``defence``, ``test_accuracy``,
        ``excess_ssim``, ``bound_bits``, ``label_bits``, ``activation_bytes_int8``, ``client_flops_share``).
      title: the figure's title.
      labelled: the ``run`` of the rows to label with their defence (None: every row).
      chosen: the ``run`` of a row to ring (a recommendation's choice).
    """
    plt = _pyplot()
    with_bound = any(row.get("bound_bits") for row in rows)
    figure, axes = plt.subplots(1, 2 if with_bound else 1, figsize=(15 if with_bound else 9, 5), squeeze=False)
    markers = dict(zip(dict.fromkeys(row["cut"] for row in rows), "osD^v<>p"))
    panels = [("excess_ssim", axes[0][0])] + ([("bound_bits", axes[0][1])] if with_bound else [])
    for key, axis in panels:
        for cut, marker in markers.items():
            members = [row for row in rows if row["cut"] == cut and row.get(key) is not None]
            if not members:
                continue
            share = members[0]["client_flops_share"]
            label = f"cut {cut}" + ("" if share is None else f" (client runs {share_text(share)} of the FLOPs)")
            points = axis.scatter([row[key] for row in members], [row["test_accuracy"] for row in members],
                                  marker=marker, s=50, label=label)
            for row in members:
                if row.get("run") == chosen:
                    axis.scatter([row[key]], [row["test_accuracy"]], s=260, facecolors="none", edgecolors="black",
                                 linewidths=1.5, label="the choice" if key == "excess_ssim" else None)
                if labelled is not None and row.get("run") not in labelled:
                    continue
                note = _short_defence(row["defence"])
                if row["activation_bytes_int8"] is not None:
                    note += f"; {row['activation_bytes_int8']:,} B"
                axis.annotate(note, (row[key], row["test_accuracy"]), fontsize=7, textcoords="offset points",
                              xytext=(4, 3), color=points.get_facecolor()[0])
        axis.set_ylabel("test accuracy")
        axis.grid(alpha=0.3)
    axis = axes[0][0]
    axis.axvline(0.0, color="grey", linestyle=":", label="label-only floor (the class shows, nothing more)")
    axis.set_xlabel("excess leakage: worst attack's SSIM minus the label-only floor's (lower = more private)")
    axis.legend(fontsize=8, loc="best")
    axis.set_title(title)
    if with_bound:
        axis = axes[0][1]
        axis.set_xscale("log")
        label_bits = next(row["label_bits"] for row in rows if row.get("label_bits"))
        axis.axvline(label_bits, color="grey", linestyle=":", label=f"log2(classes) = {label_bits:.2f} bits")
        axis.set_xlabel("bound: the most bits one request reveals about the image, any attack (log scale)")
        axis.legend(fontsize=8, loc="best")
        axis.set_title("the bound in bits")
    _save(plt, figure, path, dpi=110)


_SHORT_FLAGS = (("--adversary_label_aware", "label-aware"), ("--adversary_weight=", "adversary "),
                ("--device_noise_warmup_epochs=", "noise warm-up "), ("--device_noise_ramp_epochs=", "ramp "),
                ("--device_noise=", "noise "), ("--bounded", "tanh"),
                ("--bottleneck=", "bottleneck "), ("--noise_scale=", "x"), ("--noise=", ""), ("--", ""))


def _short_defence(flags_text: str) -> str:
    """A plot label for a row's defence flags: "bottleneck 4 adversary 1 label-aware" (NoPeek's warm-up left out:
    train.train's default)."""
    flags_text = re.sub(r"--alpha_(warmup|ramp)_epochs=[0-9.]+ ?", "", flags_text)
    for long, short in _SHORT_FLAGS:
        flags_text = flags_text.replace(long, short)
    return flags_text or "undefended"


def share_text(share: float) -> str:
    """A share as a percentage: "65%", and "99.9%" (rounded down) rather than "100%" near the top."""
    return f"{math.floor(1000 * share) / 10:.1f}%" if share > 0.99 else f"{100 * share:.0f}%"
