r"""The bits one request can reveal about the image, whatever the attacker: ``bound_bits``.

A client that sends k values, each clipped to [-clip, clip], with independent
Gaussian noise of standard deviation ``stddev`` added to each on the device,
is k uses of a Gaussian channel whose input power is at most clip^2. Shannon's
capacity of that channel bounds the mutual information between the image X
and what the server receives Y = f(X) + N:

    I(X; Y) <= sum_i I(f_i(X); Y_i) <= k/2 * log2(1 + clip^2 / stddev^2)  bits.

The first step holds because the k noises are independent of each other and of X;
the second is the capacity of one Gaussian channel under a power limit clip^2
(a value in [-clip, clip] has power at most clip^2). Anything the server does
afterwards (rounding to int8 for the wire, any decoder) cannot add information
(the data-processing inequality), so quantising the noisy values for an int8
wire can only lower the bound, and no wire can carry more than its own bits:
8 per int8 value, 16 per float16, 32 per float32. Without noise, that wire
limit is the only bound.

Assumptions: the values are bounded (the exported client ends in tanh, and the
device clips again), the noise is fresh for each image and independent of it,
and the server receives each image once (the edge client memoises the noisy
activations by a keyed hash of the image, so repeating an image repeats the
same message). Not covered: several different photos of the same scene each
carry up to the bound, so n photos can reveal up to n times the bound about
what they share.

No TensorFlow: the exporter, the edge client and the reports all use it.
"""

from __future__ import annotations

import math

WIRE_BITS = {"float32": 32, "float16": 16, "int8": 8, "uint8": 8}


def gaussian_channel_bits(values: int, stddev: float, clip: float) -> float:
    """k/2 * log2(1 + clip^2 / stddev^2): the capacity of ``values`` Gaussian channels under the power limit."""
    if stddev <= 0:
        raise ValueError(f"noise stddev must be > 0, got {stddev}")
    if clip <= 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    return values / 2.0 * math.log2(1.0 + (clip / stddev) ** 2)


def bound_bits(values: int, wire: str = "float32", stddev: float = 0.0, clip: float | None = None) -> float:
    """The most bits one request of ``values`` numbers can reveal about the image.

    Args:
      values: how many numbers the device sends per image (k).
      wire: the dtype on the wire (float32, float16, int8).
      stddev: the Gaussian noise the device adds (0: none).
      clip: the bound on each value before the noise (needed with noise).

    Returns:
      ``min(k * wire bits, k/2 * log2(1 + clip^2/stddev^2))`` with noise; ``k * wire bits`` without.
    """
    if wire not in WIRE_BITS:
        raise ValueError(f"unknown wire format {wire!r}; choose from {', '.join(WIRE_BITS)}")
    wire_limit = float(values * WIRE_BITS[wire])
    if stddev <= 0:
        return wire_limit
    if clip is None:
        raise ValueError("noise needs a clip (the values must be bounded for the bound to hold)")
    return min(wire_limit, gaussian_channel_bits(values, stddev, clip))


def stddev_for_bits(values: int, bits: float, clip: float = 1.0) -> float:
    """The noise stddev at which ``values`` bounded numbers carry exactly ``bits`` (inverse of the channel bound)."""
    if bits <= 0 or values <= 0:
        raise ValueError("bits and values must be > 0")
    return clip / math.sqrt(2.0 ** (2.0 * bits / values) - 1.0)


def label_bits(num_classes: int) -> float:
    """log2(classes): what naming the class alone takes."""
    return math.log2(max(num_classes, 1))


def bits_text(bits: float) -> str:
    """A bound in bits for a table: two decimals when small, thousands separated when large."""
    return f"{bits:.2f}" if bits < 100 else f"{bits:,.0f}"


def bound_report(values: int, num_classes: int, stddev: float = 0.0, clip: float | None = None,
                 wire: str = "float32") -> dict:
    """The bound's entries for a report: ``bound_bits``, ``label_bits``, ``bound_wire`` and the noise."""
    return {"bound_bits": round(bound_bits(values, wire, stddev, clip), 4),
            "label_bits": round(label_bits(num_classes), 4), "bound_wire": wire, "sent_values": int(values),
            "noise_stddev": float(stddev), "noise_clip": None if clip is None else float(clip)}
