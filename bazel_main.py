"""The main of every py_binary: runs the module its target names as ``python -m`` would.

Bazel runs a py_binary's main as a script, and the command-line modules use
relative imports (installed, they live under nopeek_tf), so each target passes
its module name as the first argument: ``bazel run //serving:server -- --port=8500``.
"""

import runpy
import sys

if __name__ == "__main__":
    module = sys.argv.pop(1)
    runpy.run_module(module, run_name="__main__", alter_sys=True)
