"""The loader on 2 launched processes: exact streams (against a reference built from datasets and the
tokenizer directly), same shapes at the same step, exact resume,
disjoint ranks that cover the corpus, and a common stop on uneven data."""

import json
import os
import subprocess
import sys

import pytest
from test_data_loader import write_corpus  # tests/ is on sys.path (pytest rootdir-relative import)

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    write_corpus(data, n_files=7, docs_per_file=10)  # 7 shards on 2 ranks: whole shards, uneven (4 + 3)
    out = data / "result.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--config_file",
           "accelerate_configs/cpu_2proc_zero2.yaml", "tests/workers/data_worker.py", str(data), str(out)]
    r = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    result = json.loads(out.read_text())
    assert result["world"] == 2  # accelerate launched 2 ranks that know it (gloo on CPU)
    return result


def test_each_rank_yields_its_stream_exactly_across_a_phase_change(launched):
    assert launched["stream_exact"] == [True, True]


def test_shapes_change_at_the_same_step_with_constant_tokens(launched):
    s0, s1 = launched["shapes"]
    assert s0 == s1
    assert s0[0] == [[4, 16], [4, 16]] and s0[3] == [[4, 16], [4, 16]] and s0[4] == [[2, 32], [2, 32]]
    assert all(sum(a * b for a, b in step) * 2 == 256 for step in s0)
    assert launched["last_step_global_tokens"] == 256


def test_resume_matches_uninterrupted_run(launched):
    for k, ok in launched["resume"].items():
        assert ok == [True, True], f"resume after {k} steps differs"


def test_ranks_disjoint_and_cover_one_epoch(launched):
    assert launched["disjoint"] and launched["covers"]
    assert launched["docs_per_rank"][0] != launched["docs_per_rank"][1]  # uneven shards


def test_uneven_data_stops_every_rank_at_the_same_step(launched):
    a, b = launched["stop_steps"]
    assert a == b > 0


def test_prefetcher_gives_the_same_steps_resumes_exactly_and_stops_together(launched):
    assert launched["prefetch_exact"] == [True, True]
    assert launched["prefetch_stop_steps"] == launched["stop_steps"]
