"""Runs test files with pytest: the main of the Bazel py_test targets (tests/BUILD).

  bazel test //tests:dcor_test   ->   pytest tests/dcor_test.py
  bazel test //tests:slow_test   ->   pytest tests -m slow
"""

import os
import sys

import pytest

if __name__ == "__main__":
    # numba (under the dcor package) caches compiled code beside its sources,
    # which the Bazel sandbox makes read-only.
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.environ.get("TEST_TMPDIR", "/tmp"), "numba"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.chdir(root)
    sys.exit(pytest.main(["-c", os.path.join(root, "pytest.ini"), "--rootdir", root, *sys.argv[1:]]))
