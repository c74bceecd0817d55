"""The repository stands on its own: nothing in it reads a path outside it, and every bench starts from a
clean clone (its --help runs, so its imports and the files it reads at import hold)."""

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

# a path built or written to leave the repository: ../something, os.pardir, os.path.join(ROOT, "..", ...)
OUTSIDE = re.compile(r"""\.\./(?!\.)|os\.pardir|["']\.\.["']""")


def tracked_files():
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode:
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [name for name in listed.stdout.splitlines() if name.endswith((".py", ".sh", ".sbatch", ".yaml", ".json",
                                                                         ".md", "Makefile", "run"))]


def test_no_file_reaches_outside_the_repository():
    found = []
    for name in tracked_files():
        if name == "tests/test_self_contained.py":  # its own examples of what it looks for
            continue
        with open(os.path.join(ROOT, name), encoding="utf-8", errors="replace") as f:
            found += [f"{name}:{i}: {line.strip()}" for i, line in enumerate(f, 1) if OUTSIDE.search(line)]
    assert not found, "\n".join(found)


def test_the_scan_sees_a_path_outside():
    assert OUTSIDE.search('CORPORA = os.path.join(ROOT, "..", "beside", "corpora")')
    assert OUTSIDE.search("see ../beside/corpora") and not OUTSIDE.search("for x in items[1:]: ...")


@pytest.mark.slow  # a process a bench: about 7 s each
@pytest.mark.parametrize("bench", sorted(f for f in os.listdir(os.path.join(ROOT, "bench")) if f.endswith(".py")))
def test_every_bench_starts(bench):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", bench), "--help"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]


SCRIPTS = {"pretrain", "merge_lora", "evaluate_lm", "extend_tokenizer", "export_gguf", "llama_cpp_convert"}


def imported_modules(path):
    """The top-level names of every module the file at path imports (absolute imports)."""
    import ast

    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    return names | {node.module.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module and not node.level}


def project_imports():
    """{module: the project modules it imports} for every top-level module of the repository."""
    modules = {name[:-3] for name in os.listdir(ROOT) if name.endswith(".py")}
    return {module: imported_modules(os.path.join(ROOT, module + ".py")) & modules - {module} for module in modules}


def test_the_demo_and_benches_run_scripts_never_import_them():
    """They build on what a script writes (its output folder), run as a user runs it."""
    paths = [os.path.join(folder, name) for top in ("bench", "examples") for folder, _, names in
             os.walk(os.path.join(ROOT, top)) for name in names if name.endswith(".py")]
    assert any(path.endswith("run_demo.py") for path in paths)
    found = {f"{os.path.relpath(path, ROOT)} imports {name}" for path in paths for name in imported_modules(path) & SCRIPTS}
    assert not found, ", ".join(sorted(found))


def test_imports_point_down_scripts_on_top_and_no_cycle():
    graph = project_imports()
    assert SCRIPTS <= set(graph)
    upward = {f"{module} imports {name}" for module, names in graph.items() for name in names if name in SCRIPTS}
    assert not upward, "a script is imported: " + ", ".join(sorted(upward))
    done, visiting = set(), []

    def visit(module):  # depth first; a module met again on the current path closes a cycle
        assert module not in visiting, "import cycle: " + " -> ".join(visiting[visiting.index(module):] + [module])
        if module not in done:
            visiting.append(module)
            for name in sorted(graph[module]):
                visit(name)
            visiting.pop()
            done.add(module)

    for module in sorted(graph):
        visit(module)
