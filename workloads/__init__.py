"""Built-in workload definitions (YAML). The wheel ships this folder as the package
``pytest_ctxplat.builtin.workloads``; the package reads it with importlib.resources."""
