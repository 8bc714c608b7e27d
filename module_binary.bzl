"""module_binary: a py_binary that runs a module as `python -m` does (through //:bazel_main.py)."""

def module_binary(name, module, deps):
    """`bazel run //pkg:name -- FLAGS` runs `python -m module FLAGS` with `deps` on the path."""
    native.py_binary(
        name = name,
        srcs = ["//:bazel_main.py"],
        args = [module],
        main = "//:bazel_main.py",
        python_version = "PY3",
        deps = deps,
    )
