"""Runs one test file with pytest: the main of the Bazel py_test targets (tests/BUILD).

  bazel test //tests:dcor_test   ->   pytest tests/dcor_test.py
"""

import os
import sys

import pytest

if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.chdir(root)
    sys.exit(pytest.main(["-c", os.path.join(root, "pytest.ini"), "--rootdir", root, *sys.argv[1:]]))
