"""Multi-node rendezvous on one host: two machines of one process each, ZeRO-2 + our sharded Muon,
end where the single-node 2-process run ends.

Each machine is what scripts/slurm/train.sbatch runs per node: `scaleout train --accelerate-config
accelerate_configs/cpu_multinode_zero2.yaml --num-machines 2 --machine-rank R --main-process-ip
127.0.0.1 --main-process-port P --num-processes 2`, i.e. `accelerate launch` with those arguments
(torchrun, static rendezvous, one worker per machine) under our per-node launcher. Both launch
configs leave DeepSpeed's settings to the recipe (dist.deepspeed_config: ds_configs/zero2.json,
trainer/run/dist.py), so the numerics are the same and the hashes must match bit for bit."""

import os
import socket
import subprocess
import sys

import pytest
from conftest import RUN_ENV, TINY_RUN, hashes, rank_summaries

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_machines_end_like_one_machine_with_two_processes(zero2_reference, tmp_path):
    out, port = tmp_path / "run", _free_port()
    machines = []
    for rank in (0, 1):
        cmd = [sys.executable, "-m", "trainer.cli", "train", *TINY_RUN, "--train.out_dir", str(out),
               "--accelerate-config", "accelerate_configs/cpu_multinode_zero2.yaml", "--num-processes", "2",
               "--num-machines", "2", "--machine-rank", str(rank), "--main-process-ip", "127.0.0.1",
               "--main-process-port", str(port)]
        log = open(tmp_path / f"machine{rank}.log", "w")
        machines.append(subprocess.Popen(cmd, cwd=ROOT, env=RUN_ENV, stdout=log, stderr=subprocess.STDOUT))
    try:
        codes = [m.wait(timeout=600) for m in machines]
    finally:
        for m in machines:
            if m.poll() is None:
                m.kill()
    logs = [(tmp_path / f"machine{rank}.log").read_text() for rank in (0, 1)]
    assert codes == [0, 0], f"exit codes {codes}\n--- machine 0:\n{logs[0][-4000:]}\n--- machine 1:\n{logs[1][-4000:]}"

    ranks = rank_summaries(out)
    assert [(rk["process_index"], rk["num_processes"]) for rk in ranks] == [(0, 2), (1, 2)]
    # Real ZeRO-2 partitions across the machines, the same as on one machine.
    assert [rk["optimizer_partition_numel"] for rk in ranks] == [r["optimizer_partition_numel"]
                                                                 for r in zero2_reference.summaries()]
    assert hashes(ranks) == hashes(zero2_reference.summaries())
    assert (out / "checkpoints" / "step_000010" / "COMPLETE").exists()
