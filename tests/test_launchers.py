"""run_pt.sh and the SLURM script launch pretrain.py with every flag they pass accepted: both are run with
--dry_run (the plan shows the processes and engine they set up), the SLURM one under stand-in srun/scontrol."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # torchrun through the launchers: about 9 s each


def launch(command, tmp_path, **env):
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
           # a rendezvous on port 0: torchrun binds a free one itself, so two suites can run at once
           "RDZV_ID": "test", "MASTER_PORT": "0", "OUTPUT_DIR": str(tmp_path / "out"),
           "DATA_CACHE": str(tmp_path / "cache"), **env}
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def test_run_pt_sh_starts_two_processes_with_deepspeed(tiny_model_dir, corpus_dir, tmp_path):
    # GPU settings (--fp16) plan on a machine without a GPU too: a login node
    proc = launch(["bash", "run_pt.sh", "--dry_run", "--block_size", "64"], tmp_path, MODEL_DIR=tiny_model_dir,
                  DATA_DIR=corpus_dir, GPUS_PER_NODE="2", PRECISION="--fp16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Dry run:") == 1  # the plan is printed once, by the first process
    assert "(1 a device x 8 accumulation x 2 processes)" in proc.stdout
    assert "DeepSpeed ZeRO-2 on 2 x 1 GPUs" in proc.stdout
    assert not (tmp_path / "out").exists()


def test_slurm_script_runs_torchrun_rendezvous_through_srun(tiny_model_dir, corpus_dir, tmp_path):
    (tmp_path / "bin").mkdir()
    fakes = {"scontrol": 'echo 127.0.0.1; echo 127.0.0.2\n',  # `show hostnames`: the first node is the master
             "srun": 'while [[ $1 == --* ]]; do shift; done\nexec "$@"\n',  # one task, on this machine
             "torchrun": f'echo "$@" > {tmp_path}/torchrun-args\nexec {sys.executable} -m torch.distributed.run "$@"\n'}
    for name, body in fakes.items():
        (tmp_path / "bin" / name).write_text("#!/usr/bin/env bash\n" + body)
        (tmp_path / "bin" / name).chmod(0o755)
    proc = launch(["bash", "examples/slurm/pretrain.sbatch", "--dry_run", "--block_size", "64"], tmp_path,
                  MODEL_DIR=tiny_model_dir, DATA_DIR=corpus_dir, DEEPSPEED_CONFIG="",
                  SLURM_NNODES="1", SLURM_JOB_ID="42", SLURM_JOB_NODELIST="node[1-2]", SLURM_SUBMIT_DIR=ROOT, SLURM_GPUS_ON_NODE="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DDP (no sharding) on 1 x 1 GPUs" in proc.stdout
    assert ("--nnodes 1 --nproc_per_node 1 --rdzv_id 42 --rdzv_backend c10d --rdzv_endpoint 127.0.0.1:0 "
            "pretrain.py") in (tmp_path / "torchrun-args").read_text()
