"""The training loader: P data partitions -> shuffled -> tokenized -> packed at the curriculum's length.

The data is split into ``data.partitions`` (P) partitions that do not depend on the number of
processes; each has its own document stream, shuffle buffer, token stream and state::

    source shards of partition p, epoch e  --(held-out docs dropped)-->  DocShuffler
        --> batched tokenization --> token stream of p (docs joined with EOS)

Global batch order (world-size independent, MosaicML streaming's "canonical nodes" idea). Global
rows are numbered across the run (``rows_served``); global row n is the next ``seq_len`` tokens of
partition ``n % P``. A step takes the next R = tokens_per_step / seq_len rows. Rank r of W serves
the partitions p with ``p % W == r`` (W divides P), i.e. exactly the rows with ``n % W == r``:
R / W of them per step (W divides R: ``micro_batch_size`` checks it), split into ``grad_accum``
micro-batches. So the set of rows of every step, and each partition's state, are the same
whatever W; a checkpoint stores one state per partition and resumes at any W dividing P. With
P == W partition r is rank r's own stream, served in order (the loader before partitions).

Exact resume. ``datasets``' ``IterableDataset.state_dict()`` records how far the *source*
has been read, but a ``datasets`` shuffle buffer's contents are not in it: on resume the
buffer is refilled from that position, so the documents that sat in it are silently lost
and the order after the restart differs. We therefore never use ``datasets``' buffer: the
source is read in (per-epoch permuted) shard order and shuffled by our own ``DocShuffler``,
and a partition's state is everything needed to continue bit-for-bit:

    source state_dict (position in the current epoch's shards) | shuffle buffer contents
    + RNG state | epoch, source-finished flag | unconsumed tokens of the packed stream

plus the global counters (tokens seen, steps, rows served). The buffers hold
``data.shuffle_buffer`` documents of text in all (split over the partitions), which is small
next to the optimizer state, and resume needs no replay.

Uneven data. Partitions hold different shards, so one partition's stream can run dry first. A
partition whose epoch ends starts its own next epoch at once (its shards in a new order), so
nothing is dropped; before every step all ranks take part in one ``all_reduce(MIN)`` of "I have
a full step", so when any partition is out of data (``data.epochs`` reached, or it holds no data
at all) every rank stops at the same step with ``StopIteration`` -- no hang.

    >>> loader = TrainLoader(cfg.data, tok, rank=r, world_size=W, tokens_per_step=8192,
    ...                      grad_accum=2, max_seq_len=1024)
    >>> for batch in loader.next_step():       # grad_accum dicts {"input_ids", "labels"}
    ...     model(**batch).loss.backward()
    >>> loader.state_dict()["parts"]           # {partition: state}, saved one file per partition
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.distributed as dist

from trainer.config.base import ConfigError
from trainer.data.curriculum import check_partitions, micro_batch_size, phase_at, validate_curriculum
from trainer.data.packing import DocShuffler, cut_blocks, join_documents, micro_batches
from trainer.data.sources import Source, holdout_every, is_heldout, iter_documents, text_of

STATE_VERSION = 2  # 2: per-partition states (1: one state per rank)
TOKENIZE_BATCH = 32  # documents per batched tokenizer call


def tokenize(tok, texts: list[str]) -> list[list[int]]:
    """Batched tokenization with the fast backend, without BOS/EOS post-processing (we add EOS)."""
    return [e.ids for e in tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]


def all_ranks_agree(ok: bool) -> bool:
    """MIN-reduce a flag over all ranks (True when not distributed). Every rank must call it."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ok
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([int(ok)], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def partition_buffer(shuffle_buffer: int, partitions: int) -> int:
    """Documents in each partition's shuffle buffer: ``data.shuffle_buffer`` split over the partitions."""
    return -(-shuffle_buffer // partitions)


class DocStream:
    """One partition's training documents, epoch after epoch, shuffled; resumable at any document.
    ``DocStream(source, p, P)`` is partition p of P (the source's shards split P ways)."""

    def __init__(self, source: Source, partition: int, partitions: int):
        self.source, self.partition, self.partitions = source, partition, partitions
        cfg = source.cfg
        # The seed string still says "rank": it was written when a rank had one stream, and changing
        # it would change the data order of every run (and of every checkpoint's resume).
        self.shuffler = DocShuffler(partition_buffer(cfg.shuffle_buffer, partitions),
                                    seed=f"{cfg.seed}:rank{partition}:of{partitions}")
        self.epoch, self.source_done, self.epoch_docs = 0, False, 0
        self._ds = self._it = self._pending_state = None

    def _open(self) -> None:
        cfg = self.source.cfg
        self._ds = self.source.open(self.partition, self.partitions, self.epoch, shuffle=cfg.shuffle_buffer > 0)
        if self._pending_state is not None:
            self._ds.load_state_dict(self._pending_state)
            self._pending_state = None
        self._it = iter(self._ds)

    def next_doc(self) -> str | None:
        """The next document, or None when ``data.epochs`` are done (or this partition has no data)."""
        cfg = self.source.cfg
        while True:
            if not self.source_done:
                if self._it is None:
                    self._open()
                ex = next(self._it, None)
                if ex is None:
                    self.source_done = True
                    continue
                text = text_of(ex, cfg.text_field, self.source)
                if not text or is_heldout(text, holdout_every(cfg)):
                    continue
                self.epoch_docs += 1
                out = self.shuffler.push(text)
                if out is not None:
                    return out
                continue
            out = self.shuffler.pop()
            if out is not None:
                return out
            if self.epoch_docs == 0 or (cfg.epochs and self.epoch + 1 >= cfg.epochs):
                return None  # out of data; stays so (the loader's collective stops every rank)
            self.epoch, self.source_done, self.epoch_docs = self.epoch + 1, False, 0
            self._ds = self._it = None

    def state_dict(self) -> dict:
        if self.source_done:
            src = None
        else:
            src = self._ds.state_dict() if self._ds is not None else self._pending_state
        return {"epoch": self.epoch, "source_done": self.source_done, "epoch_docs": self.epoch_docs,
                "source": src, "shuffler": self.shuffler.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        self.epoch, self.source_done, self.epoch_docs = sd["epoch"], sd["source_done"], sd["epoch_docs"]
        self._ds = self._it = None
        self._pending_state = sd["source"]
        self.shuffler.load_state_dict(sd["shuffler"])


class Partition:
    """One data partition: its document stream and the tokens tokenized but not yet served."""

    def __init__(self, source: Source, index: int, partitions: int):
        self.index = index
        self.docs = DocStream(source, index, partitions)
        self.stream = np.empty(0, dtype=np.int64)

    def fill(self, tok, eos: int, need: int) -> bool:
        """Tokenize documents until ``need`` tokens are buffered; False if the data ran out first."""
        while len(self.stream) < need:
            # read only about what is missing (a token is >= 1 character): a partition serves few rows
            # a step, and tokens read ahead sit in the stream (and the checkpoint)
            texts, chars, missing = [], 0, need - len(self.stream)
            while len(texts) < TOKENIZE_BATCH and chars < missing and (doc := self.docs.next_doc()) is not None:
                texts.append(doc)
                chars += len(doc)
            if not texts:
                return False
            self.stream = np.concatenate([self.stream, join_documents(tokenize(tok, texts), eos)])
        return True

    def take(self, n: int) -> np.ndarray:
        out, self.stream = self.stream[:n], self.stream[n:]
        return out

    def state_dict(self) -> dict:
        return {"stream": torch.from_numpy(self.stream.copy()), "docs": self.docs.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        self.stream = sd["stream"].numpy().astype(np.int64, copy=True)
        self.docs.load_state_dict(sd["docs"])


def rows_of_rank(rows_served: int, n_rows: int, rank: int, world_size: int, partitions: int) -> list[tuple[int, int]]:
    """(row in the step, partition) of the step's global rows that ``rank`` serves, in order: global
    row n = rows_served + i comes from partition n % P and belongs to rank n % W."""
    return [(i, (rows_served + i) % partitions) for i in range(n_rows) if (rows_served + i) % world_size == rank]


class TrainLoader:
    """Per-rank training batches; see the module docstring for the pipeline and the resume contract.

    ``seq_len``, ``micro_batch_size`` and ``phase`` describe the step the next ``next_step()``
    call returns (read them before the call to label that step); ``tokens_seen`` counts the
    global tokens consumed so far, ``step`` the optimizer steps served, ``rows_served`` the global
    rows; ``last_rows`` the global row numbers of the rows the last ``cut_step`` returned (in order).
    """

    def __init__(self, cfg, tok, *, rank: int = 0, world_size: int = 1, tokens_per_step: int,
                 grad_accum: int = 1, max_seq_len: int | None = None):
        self.phases = validate_curriculum(cfg.curriculum, tokens_per_step, grad_accum, world_size, max_seq_len)
        check_partitions(cfg.partitions, world_size)
        if tok.eos_token_id is None:
            raise ConfigError("data.tokenizer has no eos_token; documents are joined with EOS")
        self.cfg, self.tok, self.eos = cfg, tok, tok.eos_token_id
        self.rank, self.world_size, self.partitions = rank, world_size, cfg.partitions
        self.tokens_per_step, self.grad_accum = tokens_per_step, grad_accum
        source = Source.from_config(cfg)
        self.parts = {p: Partition(source, p, cfg.partitions) for p in range(rank, cfg.partitions, world_size)}
        self.tokens_seen = 0
        self.step = 0
        self.rows_served = 0
        self.last_rows: list[int] = []

    # -- current phase -------------------------------------------------------------------
    @property
    def _phase(self):
        return phase_at(self.phases, self.tokens_seen)  # global count: the same on every rank

    @property
    def phase(self) -> int:
        return self._phase.index

    @property
    def seq_len(self) -> int:
        return self._phase.seq_len

    @property
    def micro_batch_size(self) -> int:
        return micro_batch_size(self.tokens_per_step, self.world_size, self.grad_accum, self.seq_len)

    def _my_rows(self) -> list[tuple[int, int]]:
        return rows_of_rank(self.rows_served, self.tokens_per_step // self.seq_len, self.rank, self.world_size,
                            self.partitions)

    # -- batches -------------------------------------------------------------------------
    def next_step(self) -> list[dict]:
        """The next optimizer step's ``grad_accum`` micro-batches; ``StopIteration`` on every rank when data ends."""
        if not all_ranks_agree(self.fill_step()):
            raise StopIteration(self.exhausted_message())
        return self.cut_step()

    def fill_step(self) -> bool:
        """The local half of ``next_step`` (no collective): buffer the next step's tokens in every
        partition this rank serves; False when one of them ran out first."""
        need: dict[int, int] = {}
        for _, p in self._my_rows():
            need[p] = need.get(p, 0) + self.seq_len
        return all(self.parts[p].fill(self.tok, self.eos, n) for p, n in sorted(need.items()))

    def cut_step(self) -> list[dict]:
        """Cut the step ``fill_step`` buffered (once every rank agreed it has one) and count it."""
        seq_len, rows = self.seq_len, self._my_rows()
        assert len(rows) == self.grad_accum * self.micro_batch_size
        block = torch.from_numpy(np.stack([self.parts[p].take(seq_len) for _, p in rows]))
        self.last_rows = [self.rows_served + i for i, _ in rows]
        self.rows_served += self.tokens_per_step // seq_len
        self.tokens_seen += self.tokens_per_step
        self.step += 1
        return micro_batches(block, self.grad_accum)

    def exhausted_message(self, step: int | None = None) -> str:
        return f"data exhausted after {self.step if step is None else step} steps (data.epochs={self.cfg.epochs})"

    def close(self) -> None:
        """Nothing to release (``Prefetcher.close`` stops its thread); the loop calls it on either."""

    # -- resume --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The global counters and the state of each partition this rank serves (``parts``: {p: state});
        loads with ``torch.load(..., weights_only=True)``. A checkpoint stores one file per partition."""
        return {"version": STATE_VERSION, "partitions": self.partitions, "tokens_per_step": self.tokens_per_step,
                "tokens_seen": self.tokens_seen, "step": self.step, "rows_served": self.rows_served,
                "parts": {p: part.state_dict() for p, part in self.parts.items()}}

    def load_state_dict(self, sd: dict) -> None:
        """Accepts the states of (at least) the partitions this rank serves, saved at any world size."""
        if sd.get("version") != STATE_VERSION:
            raise ValueError(f"data loader state version {sd.get('version')} != {STATE_VERSION} (saved before "
                             "data.partitions existed); start over with --checkpoint.resume null")
        if sd["partitions"] != self.partitions:
            raise ValueError(f"the checkpoint's data has {sd['partitions']} partitions, data.partitions is "
                             f"{self.partitions}; set --data.partitions {sd['partitions']}")
        missing = sorted(set(self.parts) - set(sd["parts"]))
        if missing:
            raise ValueError(f"data loader state lacks partitions {missing}")
        if sd["tokens_per_step"] != self.tokens_per_step:
            warnings.warn("train.tokens_per_step changed since the checkpoint; the curriculum continues "
                          "from the saved token count", stacklevel=2)
        self.tokens_seen, self.step, self.rows_served = sd["tokens_seen"], sd["step"], sd["rows_served"]
        for p, part in self.parts.items():
            part.load_state_dict(sd["parts"][p])


def build_val_batches(cfg, tok, *, seq_len: int, micro_batch_size: int, n_batches: int, rank: int = 0,
                      world_size: int = 1) -> list[dict]:
    """A fixed validation set: held-out documents (never trained on), packed at ``seq_len``; or,
    with ``data.val_source`` set, documents of that source (training then holds nothing out).

    Every rank reads the same documents (the first ``data.val_docs`` in source order), joins
    them with EOS and takes its own ``n_batches`` micro-batches from the shared stream, so
    ranks evaluate disjoint rows. With too few tokens it warns and returns fewer batches (the
    same number on every rank)."""
    if cfg.val_docs == 0 or (not cfg.val_source and cfg.val_every == 0):
        return []
    if cfg.val_source:
        source, heldout, fix = Source.from_config(cfg, "val_source"), None, "give data.val_source more text"
    else:
        source, heldout, fix = Source.from_config(cfg), True, "lower data.val_every"
    texts = list(iter_documents(source, heldout=heldout, limit=cfg.val_docs))
    stream = join_documents(tokenize(tok, texts), tok.eos_token_id) if texts else np.empty(0, np.int64)
    rows_per_batch = micro_batch_size * world_size
    have = len(stream) // (rows_per_batch * seq_len)
    if have == 0:
        raise ConfigError(f"validation set has {len(stream)} tokens, less than one batch "
                          f"({rows_per_batch}x{seq_len}); {fix} or raise data.val_docs")
    if have < n_batches:
        warnings.warn(f"validation set has {len(stream)} tokens: {have} of the {n_batches} batches asked for; "
                      f"{fix} or raise data.val_docs for more", stacklevel=2)
    n = min(have, n_batches)
    rows, _ = cut_blocks(stream, n * rows_per_batch, seq_len)
    mine = rows.view(n, world_size, micro_batch_size, seq_len)[:, rank]
    return [{"input_ids": x.clone(), "labels": x.clone()} for x in mine]
