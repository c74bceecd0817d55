"""Write a small corpus of real English text that every machine has: the docstrings of Python's standard library.

    python examples/stdlib_corpus.py OUT_DIR

OUT_DIR gets docs.txt (blank-line separated), docs.jsonl and docs.json, a third of the documents each, so
the corpus exercises every common input format. The same modules give the same corpus on every machine
with the same Python.
"""

import importlib
import json
import os
import sys

MODULES = ("json", "csv", "argparse", "logging", "pathlib", "unittest", "textwrap", "difflib", "heapq",
           "collections", "functools", "itertools", "subprocess", "datetime", "decimal", "fractions", "statistics",
           "string", "re", "shutil", "tarfile", "zipfile", "email.message", "http.client", "urllib.parse")


def stdlib_documents(modules=MODULES, min_chars=200):
    """Sorted, distinct docstrings longer than min_chars of the modules and their members."""
    docs = set()
    for name in modules:
        module = importlib.import_module(name)
        for obj in [module, *vars(module).values()]:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and len(doc) > min_chars:
                docs.add(doc.strip())
    return sorted(docs)


def write_corpus(out_dir, modules=MODULES):
    docs = stdlib_documents(modules)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "docs.txt"), "w", encoding="utf-8") as f:  # a blank line ends a document
        f.write("\n\n".join(d.replace("\n\n", "\n") for d in docs[0::3]))
    with open(os.path.join(out_dir, "docs.jsonl"), "w", encoding="utf-8") as f:
        f.write("\n".join(json.dumps({"text": d}) for d in docs[1::3]))
    with open(os.path.join(out_dir, "docs.json"), "w", encoding="utf-8") as f:
        json.dump([{"text": d} for d in docs[2::3]], f)
    return out_dir


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(f"{len(stdlib_documents())} documents written to {write_corpus(sys.argv[1])}")
