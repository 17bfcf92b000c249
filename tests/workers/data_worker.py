"""Launched by tests/test_data_launched.py under `accelerate launch` (2 CPU processes).

Usage: data_worker.py DATA_DIR OUT_JSON. Rank 0 writes the gathered results; the test asserts on them.
"""

import glob
import hashlib
import json
import os
import sys
import zlib

import torch
import torch.distributed as dist
from datasets import load_dataset
from datasets.distributed import split_dataset_by_node

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from trainer.config.data import DataConfig
from trainer.data.loader import DocStream, TrainLoader
from trainer.data.prefetch import Prefetcher
from trainer.data.sources import Source, iter_documents
from trainer.data.tokenizer import build_tokenizer
from trainer.launch.process_group import run_main
from trainer.run.dist import build_accelerator

STEPS, TPS, GA = 24, 256, 2


def step_hash(mbs):
    h = hashlib.sha256()
    for b in mbs:
        h.update(b["input_ids"].numpy().tobytes())
    return h.hexdigest()[:16]


def _rows(loader) -> torch.Tensor:
    """Every token the loader serves this rank in STEPS steps, in order."""
    return torch.cat([b["input_ids"].reshape(-1) for _ in range(STEPS) for b in loader.next_step()])


def gather(obj):
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def main():
    root, out_path = sys.argv[1], sys.argv[2]
    acc = build_accelerator(None, grad_accum=1)
    rank, world = acc.process_index, acc.num_processes
    cfg = DataConfig(source=root, tokenizer="bytes", curriculum="16:1024,32:inf", val_every=7,
                     shuffle_buffer=4, seed=1, partitions=world)  # partition r is rank r's own stream
    tok = build_tokenizer(cfg)
    def make(c=cfg):
        return TrainLoader(c, tok, rank=rank, world_size=world, tokens_per_step=TPS,
                                         grad_accum=GA, max_seq_len=64)
    res = {"world": world}

    # 1. uninterrupted run: hashes and shapes
    ref = make()
    hashes, shapes = [], []
    for _ in range(STEPS):
        mbs = ref.next_step()
        hashes.append(step_hash(mbs))
        shapes.append([list(b["input_ids"].shape) for b in mbs])
    n_step_tokens = torch.tensor([sum(b["input_ids"].numel() for b in mbs)])
    dist.all_reduce(n_step_tokens)
    # the rank's own token stream, built without the loader's stream code: the same loader without
    # shuffling against datasets' own split of the files (partition r of W is rank r's), the hold-out
    # rule written out (crc32 % val_every == 0), the tokenizer called directly, EOS after each document
    plain = DataConfig(**{**cfg.__dict__, "shuffle_buffer": 0})
    got = _rows(make(plain))
    files = sorted(glob.glob(os.path.join(root, "*.jsonl")))
    ds = split_dataset_by_node(load_dataset("json", data_files=files, split="train", streaming=True), rank, world,
                               strategy="shards")
    want = []
    while len(want) < len(got):  # epoch after epoch, in the same order (nothing shuffles)
        for ex in ds:
            if zlib.crc32(ex["text"].encode()) % cfg.val_every:
                want += tok(ex["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    want = torch.tensor(want[: len(got)])
    res["stream_exact"] = gather(bool(torch.equal(got, want)))
    res["shapes"] = gather(shapes)
    res["last_step_global_tokens"] = int(n_step_tokens)

    # 2. interrupt after k steps (mid-phase 0; exactly at the 1024-token boundary), resume, compare
    res["resume"] = {}
    for k in (3, 4, 11):
        a = make()
        seq = [step_hash(a.next_step()) for _ in range(k)]
        path = os.path.join(os.path.dirname(out_path), f"data_k{k}_rank{rank}.pt")
        torch.save(a.state_dict(), path)
        del a
        b = make()
        b.load_state_dict(torch.load(path, weights_only=True))
        seq += [step_hash(b.next_step()) for _ in range(STEPS - k)]
        res["resume"][k] = gather(seq == hashes)

    # 3. one epoch: ranks' documents are disjoint and cover the training corpus
    one = DataConfig(**{**cfg.__dict__, "epochs": 1})
    stream, mine = DocStream(Source.from_config(one), rank, world), []
    while (d := stream.next_doc()) is not None:
        mine.append(d)
    per_rank = gather(mine)
    all_train = list(iter_documents(Source.from_config(one), heldout=False))
    res["disjoint"] = not (set(per_rank[0]) & set(per_rank[1]))
    res["covers"] = sorted(per_rank[0] + per_rank[1]) == sorted(all_train)
    res["docs_per_rank"] = [len(p) for p in per_rank]

    # 4. uneven data, one epoch: every rank stops at the same step, nobody hangs
    loader, steps = make(one), 0
    try:
        while True:
            loader.next_step()
            steps += 1
    except StopIteration:
        pass
    res["stop_steps"] = gather(steps)

    # 5. through the background prefetcher: the same steps, its saved (consumed) state resumes exactly,
    #    and uneven data still stops every rank at the same step (the agreement stays on the main thread)
    a = Prefetcher(make())
    seq = [step_hash(a.next_step()) for _ in range(4)]
    path = os.path.join(os.path.dirname(out_path), f"prefetch_rank{rank}.pt")
    torch.save(a.state_dict(), path)
    a.close()
    b = Prefetcher(make())
    b.load_state_dict(torch.load(path, weights_only=True))
    seq += [step_hash(b.next_step()) for _ in range(STEPS - 4)]
    b.close()
    res["prefetch_exact"] = gather(seq == hashes)
    loader, steps = Prefetcher(make(one)), 0
    try:
        while True:
            loader.next_step()
            steps += 1
    except StopIteration:
        pass
    loader.close()
    res["prefetch_stop_steps"] = gather(steps)

    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(res, f)
    dist.barrier()


if __name__ == "__main__":
    sys.exit(run_main(main))  # the process group is destroyed on every exit path
