"""ShardedMuon under DeepSpeed ZeRO-1/2 on 2 and 4 CPU ranks (gloo), launched through accelerate.

Every parameter after 5 steps equals the single-process run on the same global batch (1e-5
relative), a Muon matrix straddles a rank boundary, each rank holds 1/W of the optimizer state,
clipping matches a reference that clips the same global norm before its step, and a step with a
NaN gradient on one rank is skipped everywhere; the ``moe`` runs (deepseek_v3: MLA and expert stacks,
2 and 4 ranks) cut an expert slice and gather only it. (Resume is the trainer's own checkpoint's: the kill
chain in tests/test_reliability.py and the reshards in tests/test_elastic.py.)
"""

import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.workers.muon_parity import reference_params, result_file  # noqa: E402

WORKER = os.path.join(ROOT, "tests", "workers", "muon_parity.py")
METHODS = ["ns=polar_express", "ns=gram", "ns=gram_polar_express"]  # optim.ns_method beside the quintic
RUNS = {2: ["1:1", "1:4", "2:1", "2:4:clip", "2:2:nan", "2:1:moe", *(f"2:1:{m}" for m in METHODS)],
        4: ["2:1", "2:1:moe", *(f"2:1:{m}" for m in METHODS), "exchange"]}


def _launch(out_dir, world: int, specs: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           os.path.join(ROOT, "accelerate_configs", "cpu_2proc_zero2.yaml"), "--num_processes", str(world),
           WORKER, str(out_dir), *specs]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("muon_zero")
    found = {}
    for world, specs in RUNS.items():
        _launch(out, world, specs)
        for spec in specs:
            name = "exchange_w4.pt" if spec == "exchange" else result_file(spec, world)
            found[(world, spec)] = torch.load(out / name, weights_only=False)
    return found


CASES = [(w, s) for w, specs in RUNS.items() for s in specs if s != "exchange"]


@pytest.mark.slow
@pytest.mark.parametrize("world,spec", CASES)
def test_zero_matches_single_process(results, world, spec):
    """ZeRO against one process with the same method: for the quintic that run is tests/test_muon.py's
    match with torch.optim.Muon, for the other methods tests/test_newton_schulz.py's plain loops."""
    r = results[(world, spec)]
    assert r["world"] == world and r["ranks_identical"]
    ref = reference_params(world, r["accum"], r["steps"], r["clip"], r["skip_step"], r["moe"], r["ns_method"])
    rel = {n: ((r["params"][n] - ref[n]).norm() / ref[n].norm()).item() for n in ref}
    assert max(rel.values()) < 1e-5, sorted(rel.items(), key=lambda kv: -kv[1])[:3]


@pytest.mark.slow
@pytest.mark.parametrize("world,spec", [(w, s) for w, s in CASES if s in ("2:1", "1:1", "2:1:moe")])
def test_the_partition_simulator_gives_deepspeeds_fragments(results, world, spec):
    """``simulate_zero_fragments`` (what scripts/bench/straddlers.py feeds the real layout code at W up to
    256) against the fragments DeepSpeed's ``_hp_mapping`` gave each rank of a real run."""
    from trainer.state.fragments import simulate_zero_fragments

    r = results[(world, spec)]
    assert simulate_zero_fragments(r["numels"], world) == [[tuple(f) for f in rank] for rank in r["fragments"]]


@pytest.mark.slow
@pytest.mark.parametrize("world,spec", CASES)
def test_straddler_exists_and_state_is_sharded(results, world, spec):
    r = results[(world, spec)]
    assert r["straddler_numel"] > 0 and r["straddlers"], "the layout must exercise the straddler exchange"
    total = r["unsharded_bytes"]
    for rank_bytes in r["state_bytes"]:
        assert rank_bytes["muon"] == pytest.approx(total["muon"] / world, rel=0.05)
        assert rank_bytes["muon"] + rank_bytes["adamw"] == pytest.approx(
            (total["muon"] + total["adamw"]) / world, rel=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("world", [w for w, specs in RUNS.items() if "2:1:moe" in specs])
def test_an_expert_slice_cut_by_a_partition_is_gathered_alone(results, world):
    """deepseek_v3 (MLA + experts): a partition boundary cuts an expert stack, and the exchange carries
    only the cut expert matrices, not the stacks (the run's parity is test_zero_matches_single_process)."""
    r = results[(world, "2:1:moe")]
    stacks = [n for n in r["cut_params"] if ".experts." in n]
    assert stacks, r["cut_params"]  # a partition boundary falls inside an expert stack
    # a boundary cuts one expert's matrix: that matrix alone goes to its owner
    assert {(40, 64), (64, 40)} & set(r["straddlers"]), r["straddlers"]
    assert r["straddler_numel"] < sum(r["numel"][n] for n in r["cut_params"])  # slices, not whole stacks
    assert any(n.endswith("q_a_proj.weight") for n in r["numel"])  # MLA's low-rank projections train too


@pytest.mark.slow
@pytest.mark.parametrize("case", ["two-straddlers-rank3-none", "one-matrix-on-four-ranks"])
def test_owner_exchange_on_four_ranks_equals_orthogonalizing_every_matrix_whole(results, case):
    """The owner exchange for real on 4 gloo ranks, on hand-cut partitions: two straddlers with a rank
    that holds none (it sends and receives nothing and still gets its whole matrices right), and one
    matrix held by all four ranks. Every rank's update equals the matrices orthogonalized whole."""
    r = results[(4, "exchange")][case]
    got = torch.cat([rank["update"] for rank in r["ranks"]])
    assert (got - r["reference"]).abs().max() < 1e-6
    owners = [owner for _, owner, _ in r["straddlers"]]
    assert all(owner in [h[0] for h in holders] for _, owner, holders in r["straddlers"])
    assert sorted(sum((rank["owned"] for rank in r["ranks"]), [])) == list(range(len(owners)))  # once each
    if case == "two-straddlers-rank3-none":
        assert len(r["straddlers"]) == 2 and r["ranks"][3]["straddler_pieces"] == 0 and r["ranks"][3]["pieces"] == 2
    else:
        assert any(len(holders) == 4 for _, _, holders in r["straddlers"]), r["straddlers"]
