"""Mutation checks: break the product on purpose, one way at a time, in a copy of the repository, and run the
tests that claim to guard it. Each mutation must make them fail; one that passes is a test that cannot catch
what it claims.

    python tests/mutations.py            # every mutation (a few minutes)
    python tests/mutations.py resume     # those whose name contains "resume"

Runs each mutation's tests unchanged first (they must pass), then prints one line a mutation (caught or NOT
CAUGHT, and the time) and exits 1 if any was not caught. Not a test file itself (pytest does not collect
it): `make mutations` runs it.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 900  # seconds a mutation's tests may take


@dataclass
class Mutation:
    name: str
    path: str  # the file changed, relative to the repository
    old: str  # text that occurs exactly once in it
    new: str
    tests: tuple  # pytest arguments: the tests that must catch it


MUTATIONS = [
    Mutation("resume starts again from step 0", "pretrain.py", "trainer.train(resume_from_checkpoint=resume)",
             "trainer.train(resume_from_checkpoint=None)",
             ("tests/test_resume.py", "-k", "mid_way and cached")),
    Mutation("resume accepts other data", "trainer_utils.py", "    if changes:\n        raise UserError(",
             "    if False:\n        raise UserError(", ("tests/test_faults_training.py", "-k", "other_data")),
    Mutation("interrupted saves renamed onto each other", "trainer_utils.py",
             "        if not os.path.lexists(target):", "        if True:",
             ("tests/test_faults_training.py", "-k", "interrupted_saves")),
    Mutation("a full disk is a traceback", "trainer_utils.py", "        if not is_disk_full(e):\n            raise",
             "        if True:\n            raise", ("tests/test_faults_training.py", "-k", "want_of_space")),
    Mutation("one step past --max_steps after a final-save kill", "trainer_utils.py",
             "        if 0 < self.state.max_steps <= self.state.global_step:",
             "        if False:", ("tests/test_faults_training.py", "-k", "final_save")),
    Mutation("the eval loss is a mean of batch means", "trainer_utils.py",
             "            output.metrics[f\"{metric_key_prefix}_loss\"] = nll / tokens",
             "            pass", ("tests/test_bits_per_byte.py",)),
    Mutation("an adapter of another base loads", "model_utils.py", "    other_shape = [key for key in expected",
             "    return\n    other_shape = [key for key in expected",
             ("tests/test_faults_training.py", "-k", "adapter_of_another")),
    Mutation("any ValueError while loading blames the path", "model_utils.py",
             "        if not isinstance(e, OSError) and not is_about_path(e, path):\n            raise",
             "        pass", ("tests/test_invariance.py", "-k", "bug_inside_loading")),
    Mutation("merge_lora writes into an existing folder", "output_utils.py",
             "    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:",
             "    if False:", ("tests/test_faults_scripts.py", "-k", "existing_non_empty")),
    Mutation("--output_dir under a file found late", "arguments.py",
             "    if not os.path.isdir(existing):\n        raise UserError(",
             "    if False:\n        raise UserError(", ("tests/test_faults_training.py", "-k", "output_dir")),
    Mutation("the dry run checks the GPU at parse time", "arguments.py",
             "        if self.output_dir and not self.dry_run:",
             "        check_hardware(ModelArguments(), self)\n        if self.output_dir and not self.dry_run:",
             ("tests/test_arguments.py", "-k", "gpu_settings")),
    Mutation("UTF-8 bytes counted as characters", "data_utils.py", "    if text.isascii():\n        return len(text)",
             "    if True:\n        return len(text)", ("tests/test_bits_per_byte.py",)),
    Mutation("evaluate_lm counts characters as bytes", "eval_utils.py",
             '    n_bytes = sum(len(t.encode("utf-8")) for t in texts)', "    n_bytes = sum(len(t) for t in texts)",
             ("tests/test_bits_per_byte.py", "-k", "evaluate_lm")),
    Mutation("a user mistake exits 0", "arguments.py", "    print(message, file=sys.stderr)\n    sys.exit(2)",
             "    print(message, file=sys.stderr)\n    sys.exit(0)", ("tests/test_arguments.py", "-k", "bad_config")),
    Mutation("varlen attention sees the future", "attention_utils.py", "is_causal=True,\n", "is_causal=False,\n",
             ("tests/test_attention.py", "-k", "reference")),
    Mutation("tokens/s counts the padding", "throughput_utils.py", "    return (~padding).sum(),",
             "    return torch.ones_like(padding).sum(),", ("tests/test_throughput.py", "-k", "document_stats")),
    Mutation("a document's first token is scored", "data_utils.py",
             "    return [IGNORE_INDEX if p == 0 else t for t, p in zip(input_ids, position_ids)]",
             "    return [IGNORE_INDEX if i == 0 else t for i, t in enumerate(input_ids)]",
             ("tests/test_data_utils.py", "tests/test_invariance.py")),
    Mutation("the packer drops the short last row", "data_utils.py",
             "    return np.append(np.arange(0, n, block_size), n) if n else",
             "    return np.arange(0, full + 1, block_size) if n else", ("tests/test_data_utils.py",)),
    Mutation("--text_column left out of the cache key", "data_utils.py",
             'for k in ("text_column", "keep_linebreaks", "validation_split_percentage",',
             'for k in ("keep_linebreaks", "validation_split_percentage",', ("tests/test_cache_key.py",)),
    Mutation("the data code left out of the cache key", "data_utils.py",
             "json.dumps([PREPARED_FORMAT_VERSION, code_version(), options]",
             "json.dumps([PREPARED_FORMAT_VERSION, options]", ("tests/test_one_path.py", "-k", "code")),
    Mutation("the held-out documents depend on more than their content", "data_utils.py",
             "    fractions = np.fromiter(digests, dtype=np.uint64).astype(np.float64) / 2**64\n",
             "    fractions = np.fromiter(digests, dtype=np.uint64).astype(np.float64) / 2**64\n"
             "    fractions = (fractions + __import__('random').random()) % 1\n", ("tests/test_split_pinned.py",)),
]


def copy_repository(target):
    """The working tree's tracked and untracked (not ignored) files, as git lists them."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for name in listed:
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(os.path.dirname(os.path.join(target, name)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(target, name))


def apply(mutation, root):
    path = os.path.join(root, mutation.path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.count(mutation.old) != 1:
        raise SystemExit(f"mutation {mutation.name!r}: its text occurs {text.count(mutation.old)} times in "
                         f"{mutation.path}, not once; update tests/mutations.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(mutation.old, mutation.new))


def tests_fail(tests, mutation=None):
    """Whether the tests fail on a copy of the repository, with the mutation applied if one is given."""
    with tempfile.TemporaryDirectory(prefix="mutation-") as root:
        copy_repository(root)
        os.symlink(os.path.join(ROOT, ".cache"), os.path.join(root, ".cache"))  # the converted SmolLM2, if any
        if mutation:
            apply(mutation, root)
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                  cwd=root, capture_output=True, text=True, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:  # the breakage hangs the tests: they do not pass
            return True
    if proc.returncode == 5:
        raise SystemExit(f"{' '.join(tests)} collects no test; update tests/mutations.py")
    return proc.returncode != 0


def main(argv):
    chosen = [m for m in MUTATIONS if not argv or any(word in m.name for word in argv)]
    # first the tests as they are: a mutation only counts as caught by tests that pass without it
    for tests in dict.fromkeys(m.tests for m in chosen):
        if tests_fail(tests):
            raise SystemExit(f"{' '.join(tests)} fails without any mutation; fix it first")
    missed = []
    for mutation in chosen:
        start = time.time()
        ok = tests_fail(mutation.tests, mutation)
        print(f"{'caught' if ok else 'NOT CAUGHT':10} {mutation.name} ({mutation.path}; {time.time() - start:.0f} s)",
              flush=True)
        missed += [] if ok else [mutation.name]
    print(f"{len(chosen) - len(missed)} of {len(chosen)} mutations caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
