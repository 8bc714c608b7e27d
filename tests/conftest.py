"""Shared test set-up: quiet TensorFlow, and the repository root on sys.path."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

# tf.distribute is tested on the CPU split into logical devices, which must be
# configured before TensorFlow initialises (so: here, before any test runs).
TEST_CPU_DEVICES = 4
import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * TEST_CPU_DEVICES)
