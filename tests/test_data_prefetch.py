"""The background prefetcher: the same steps as the plain loader, and its saved state is the consumed position."""

import pytest
import torch

from tests.test_data_loader import corpus, data_cfg, step_hash  # noqa: F401  (corpus is a fixture)
from trainer.data.loader import TrainLoader
from trainer.data.prefetch import Prefetcher
from trainer.data.tokenizer import build_tokenizer


def shapes_and_hashes(loader, n):
    out = []
    for _ in range(n):
        shape = (loader.phase, loader.seq_len, loader.micro_batch_size, loader.tokens_seen)
        out.append((shape, step_hash(loader.next_step())))
    return out


def test_prefetched_steps_and_saved_state_match_the_plain_loader(corpus):  # noqa: F811
    root, _ = corpus
    cfg = data_cfg(root, shuffle_buffer=5)
    tok = build_tokenizer(cfg)
    make = lambda: TrainLoader(cfg, tok, tokens_per_step=128, grad_accum=2)  # noqa: E731
    plain, pre = make(), Prefetcher(make())
    assert shapes_and_hashes(pre, 3) == shapes_and_hashes(plain, 3)  # crosses the phase change at 512 tokens
    saved, want = pre.state_dict(), plain.state_dict()
    assert saved["step"] == want["step"] == 3 and saved["tokens_seen"] == want["tokens_seen"]
    assert torch.equal(saved["parts"][0]["stream"], want["parts"][0]["stream"])
    assert saved["parts"][0]["docs"] == want["parts"][0]["docs"]
    rest = shapes_and_hashes(plain, 4)
    assert shapes_and_hashes(pre, 4) == rest
    pre.close()

    resumed = Prefetcher(make())
    resumed.load_state_dict(saved)  # as a resume does, before the first step
    assert shapes_and_hashes(resumed, 4) == rest
    resumed.close()


def test_prefetcher_stops_where_the_plain_loader_stops_and_keeps_the_consumed_state(corpus):  # noqa: F811
    """One process; that every rank stops at the same step through the prefetcher is checked on 2
    launched ranks (tests/test_data_launched.py, ``prefetch_stop_steps``)."""
    root, _ = corpus
    cfg = data_cfg(root, epochs=1)
    tok = build_tokenizer(cfg)
    plain, pre = TrainLoader(cfg, tok, tokens_per_step=32), Prefetcher(TrainLoader(cfg, tok, tokens_per_step=32))
    n = 0
    with pytest.raises(StopIteration):
        while True:
            assert step_hash(pre.next_step()) == step_hash(plain.next_step())
            n += 1
    with pytest.raises(StopIteration):
        plain.next_step()
    assert n > 0 and pre.step == plain.step == n and pre.state_dict()["step"] == n
    with pytest.raises(StopIteration):
        pre.next_step()
    pre.close()


def test_a_loader_error_reaches_the_main_thread(corpus):  # noqa: F811
    root, _ = corpus
    cfg = data_cfg(root)
    pre = Prefetcher(TrainLoader(cfg, build_tokenizer(cfg), tokens_per_step=128, grad_accum=2))

    def boom():
        raise RuntimeError("tokenizer failed")

    pre.loader.fill_step = boom
    with pytest.raises(RuntimeError, match="tokenizer failed"):
        pre.next_step()
    pre.close()
