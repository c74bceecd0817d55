"""Writing a script's output folder without losing what is there (merge_lora.py, extend_tokenizer.py).

- An existing non-empty --output_dir is refused before any model loads, unless --overwrite_output_dir; an
  output folder that is, holds or lies inside one of the script's inputs is refused always.
- Everything is written into a fresh folder beside --output_dir first, so a crash leaves nothing half-written
  at --output_dir. Then that folder is renamed into place (a new --output_dir) or its files replace the
  same-named files of the existing one, one rename each (--overwrite_output_dir): no folder the script did
  not create is ever deleted, and files it does not write are kept.
"""

import contextlib
import fnmatch
import logging
import os
import shutil
import tempfile

from arguments import UserError
from arguments import check_output_dir as check_writable_output_dir

logger = logging.getLogger(__name__)
WEIGHT_FILES = "*.safetensors*"  # model.safetensors, model-00001-of-00002.safetensors, model.safetensors.index.json


def path_relation(output_dir, path):
    """How output_dir sits against an input path: 'is', 'holds', 'is inside', or None (apart)."""
    out, other = os.path.realpath(output_dir), os.path.realpath(path)
    if out == other:
        return "is"
    common = os.path.commonpath([out, other])
    return "holds" if common == out else "is inside" if common == other else None


def check_output_dir(output_dir, overwrite, inputs):
    """Refuse an --output_dir that would lose or mix with the user's files. inputs: (flag, path) pairs of the
    script's inputs; paths that do not exist here (hub ids) are left out."""
    for flag, path in inputs:
        relation = os.path.exists(path) and path_relation(output_dir, path)
        if relation:
            raise UserError(f"--output_dir {output_dir} {relation} {flag} {path}; give a new folder for the output")
    check_writable_output_dir(output_dir)  # a file, under a file, or not writable
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise UserError(f"--output_dir {output_dir}: the folder exists and is not empty; give a new folder, or "
                        "--overwrite_output_dir to replace the files this script writes there (others are kept)")


@contextlib.contextmanager
def staged_output_dir(output_dir):
    """A fresh empty folder to write the output into; once the block ends without an error, its contents are
    moved to output_dir (see publish). On an error it is removed and output_dir is left as it was."""
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    # hidden (data readers skip it) and named by mkdtemp, so it never takes a folder of the user's
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(output_dir))}.", suffix=".partial",
                               dir=parent)
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp's is private (0700); the output is readable as usual
    try:
        yield staging
        publish(staging, output_dir)
    finally:
        if os.path.isdir(staging):  # not renamed into place: made by mkdtemp above, so ours to delete
            shutil.rmtree(staging)


def current_umask():
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def publish(staging, output_dir):
    """Move staging's files to output_dir: the folder itself is renamed into place when output_dir does not
    exist (it appears complete); else each file replaces its namesake there, and files the script did not write
    stay, named in a warning, except an older model's weight files (WEIGHT_FILES): a leftover model.safetensors
    beside new shards would be what from_pretrained loads."""
    if not os.path.exists(output_dir):
        os.rename(staging, output_dir)
        return
    written = sorted(os.listdir(staging))
    for name in written:
        os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
    for name in sorted(set(os.listdir(output_dir)) - set(written)):
        if fnmatch.fnmatch(name, WEIGHT_FILES):  # the older model's weights would load instead of, or with, ours
            logger.warning("--overwrite_output_dir: removed %s, weights of the model this run replaced", name)
            os.remove(os.path.join(output_dir, name))
    kept = sorted(set(os.listdir(output_dir)) - set(written))
    if kept:
        logger.warning("--overwrite_output_dir: kept what this run did not write in %s: %s", output_dir,
                       ", ".join(kept))
