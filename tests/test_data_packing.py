"""Packing and the shuffle buffer: pure functions, exact bookkeeping."""

import pickle

import numpy as np

from trainer.data.packing import DocShuffler, cut_blocks, join_documents, micro_batches


def test_join_and_cut_lose_nothing():
    stream = join_documents([[1, 2, 3], [], [4, 5]], eos_id=0)
    assert stream.tolist() == [1, 2, 3, 0, 0, 4, 5, 0]
    block, rest = cut_blocks(stream, 2, 3)
    assert block.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert rest.tolist() == [5, 0]
    mbs = micro_batches(block, 2)
    assert [m["input_ids"].shape for m in mbs] == [(1, 3), (1, 3)]
    assert all((m["labels"] == m["input_ids"]).all() for m in mbs)


def test_shuffler_is_a_permutation_and_resumes_exactly():
    docs = [f"doc{i}" for i in range(50)]

    def run(sh, items):
        out = [o for d in items if (o := sh.push(d)) is not None]
        return out

    sh = DocShuffler(8, seed="s")
    full = run(sh, docs) + list(sh.drain())
    assert sorted(full) == sorted(docs) and full != docs

    sh = DocShuffler(8, seed="s")
    first = run(sh, docs[:20])
    state = pickle.loads(pickle.dumps(sh.state_dict()))
    sh2 = DocShuffler(8, seed="other")
    sh2.load_state_dict(state)
    assert first + run(sh2, docs[20:]) + list(sh2.drain()) == full


def test_shuffler_capacity_zero_passes_through():
    sh = DocShuffler(0, seed="s")
    assert [sh.push(d) for d in "abc"] == list("abc")
    assert np.array_equal(list(sh.drain()), [])
