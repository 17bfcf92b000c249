"""scripts/bench/convergence.py and its corpus (scripts/bench/code_corpus.py): the corpus recipe (pinned,
deduplicated, capped, held out by file), the sweep planner, tokens-to-target, and one real micro run."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts", "bench"))

import code_corpus  # noqa: E402
import convergence  # noqa: E402


def fake_site_packages(root, n=90):
    """``n`` distinct modules, a duplicate of one, an empty __init__.py and one 30,000-character file."""
    for i in range(n):
        path = root / f"pkg{i % 7}" / f"mod{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"def f_{i}_{j}(x):\n    return x * {j} + {i}\n\n" for j in range(20)))
    (root / "pkg0" / "copy_of_mod0.py").write_text((root / "pkg0" / "mod0.py").read_text())
    (root / "pkg0" / "__init__.py").write_text("\n")
    (root / "pkg1" / "big.py").write_text("".join(f"VALUE_{j} = {j}  # a long generated table\n" for j in range(800)))
    (root / "pkg1" / "data.txt").write_text("not python")


def test_corpus_removes_duplicates_caps_pieces_and_holds_out_whole_files(tmp_path):
    fake_site_packages(tmp_path / "sp")
    docs, manifest = code_corpus.read_documents(str(tmp_path / "sp"))
    assert len(manifest["files"]) == 93 and manifest["duplicates"] == 1 and manifest["too_short"] == 1
    assert [f for f, _ in manifest["files"]] == sorted(f for f, _ in manifest["files"])  # pinned order
    big = next(d["text"] for d in docs if d["path"].endswith("big.py"))
    cut = code_corpus.pieces(big)
    assert len(big) > 3 * code_corpus.PIECE_CHARS and len(cut) == math.ceil(len(big) / code_corpus.PIECE_CHARS)
    assert "".join(cut) == big and all(len(p) <= code_corpus.PIECE_CHARS and p.endswith("\n") for p in cut)
    assert code_corpus.pieces("x" * 20_000, 8000) == ["x" * 8000, "x" * 8000, "x" * 4000]  # one long line
    train, val = code_corpus.split(docs)
    held = [d for d in docs if any(p in val for p in code_corpus.pieces(d["text"]))]
    assert held and not set(train) & set(val)
    assert all(set(code_corpus.pieces(d["text"])) <= set(val) for d in held)  # whole files, every piece
    assert train == sorted(train, key=lambda p: __import__("hashlib").sha256(p.encode()).digest())
    # the manifest's hash pins the files: one changed byte is another corpus
    again = code_corpus.read_documents(str(tmp_path / "sp"))[1]["hash"]
    (tmp_path / "sp" / "pkg2" / "mod2.py").write_text("changed = 1\n" * 10)
    assert again == manifest["hash"] != code_corpus.read_documents(str(tmp_path / "sp"))[1]["hash"]


def test_corpus_build_writes_shards_tokenizer_and_counts_and_is_cached(tmp_path):
    fake_site_packages(tmp_path / "sp", n=120)
    first = code_corpus.build(str(tmp_path / "out"), root=str(tmp_path / "sp"), vocab_size=400, log=lambda m: None)
    shards = sorted(os.listdir(first["source"]))
    assert len(shards) == code_corpus.SHARDS and first["val_pieces"] >= 1 and first["val_files"] >= 1
    rows = [json.loads(line) for s in shards for line in open(os.path.join(first["source"], s))]
    assert len(rows) == first["train_pieces"] and all(set(r) == {"text"} for r in rows)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(first["tokenizer"])
    assert tok.get_vocab_size() == 400
    assert first["train_tokens"] == sum(len(tok.encode(r["text"]).ids) for r in rows)
    mtime = os.path.getmtime(first["tokenizer"])
    assert code_corpus.build(str(tmp_path / "out"), root=str(tmp_path / "sp"), vocab_size=400) == first
    assert os.path.getmtime(first["tokenizer"]) == mtime  # cached, not rebuilt


def test_tokens_to_target_interpolates_between_evaluations():
    curve = [(100, 5.0), (200, 4.0), (300, 3.0)]
    assert convergence.tokens_to(curve, 3.5) == 250
    assert convergence.tokens_to(curve, 5.5) == 100
    assert convergence.tokens_to(curve, 3.0) == 300
    assert convergence.tokens_to(curve, 2.9) == math.inf


def test_budget_to_target_interpolates_between_shorter_runs():
    assert convergence.budget_to([(1.0, 4.0), (0.5, 5.0), (0.75, 4.5)], 4.25) == pytest.approx(0.875)
    assert convergence.budget_to([(0.5, 3.9), (0.75, 3.8), (1.0, 3.7)], 4.0) == 0.0  # at most the shortest
    assert convergence.budget_to([(0.5, 5.0), (1.0, 4.5)], 4.0) == math.inf
    assert convergence.fmt_fraction([0.0, 0.6], 0.5) == "<= 0.5 (<= 0.5, 0.60)"
    assert convergence.fmt_fraction([0.5, 0.7]) == "**0.60** (0.50, 0.70)"
    assert convergence.fmt_fraction([0.9, math.inf]) == "not reached (0.90, > 1)"


def test_sweep_extends_past_an_edge_at_most_twice_then_settles():
    grid = [0.01, 0.02, 0.04, 0.08]
    loss = {0.01: 3.0, 0.02: 2.9, 0.04: 2.8, 0.08: 2.7}
    assert convergence.sweep_next(grid, {}) == (grid, None)
    assert convergence.sweep_next(grid, loss) == ([0.16], None)
    assert convergence.sweep_next(grid, {**loss, 0.16: 2.6}) == ([0.32], None)
    assert convergence.sweep_next(grid, {**loss, 0.16: 2.6, 0.32: 2.5}) == ([], 0.32)  # extended twice
    assert convergence.sweep_next(grid, {**loss, 0.02: 2.0}) == ([], 0.02)  # an inner minimum
    assert convergence.sweep_next(grid, {**loss, 0.01: 1.0}) == ([0.005], None)
    assert convergence.sweep_next(grid, {**loss, 0.01: 1.0, 0.005: math.inf}) == ([], 0.01)  # diverged below


def test_planner_sweeps_each_arm_transfers_mup_and_resweeps_sp():
    """The plan, driven to the end with a made-up loss (best lr: 0.004 for AdamW (SP) at 128 wide and
    0.002 at 256; 0.02 for Muon at both): every arm swept at the small width, the muP arms run at the
    large width with the small width's lr, AdamW (SP) swept again there, every chosen run with both seeds."""
    mode = dict(convergence.MODES["full"])
    best = {("adamw_sp", "tiny"): 0.004, ("adamw_sp", "small"): 0.002}

    def final(arm, model, lr):
        want = best.get((arm, model), 0.02 if arm.startswith("muon") else 0.008)
        return 3 + math.log2(lr / want) ** 2

    rows, rounds = {}, 0
    while True:
        jobs, chosen = convergence.plan(rows, mode)
        if not jobs:
            break
        rounds += 1
        for j in jobs:
            rows[convergence.run_key(**j)] = dict(j, final=final(j["arm"], j["model"], j["lr"]))
    assert chosen == {("adamw_sp", "tiny"): 0.004, ("adamw_sp", "small"): 0.002, ("adamw_mup", "tiny"): 0.008,
                      ("adamw_mup", "small"): 0.008, **{(a, m): 0.02 for a in ("muon_mup", "muon_mup_curriculum",
                                                                              "muon_mup_gram_pe")
                                                        for m in ("tiny", "small")}}
    full = {k: r for k, r in rows.items() if "frac" not in r}
    short = sorted((r["model"], r["frac"], r["seed"], r["lr"]) for r in rows.values() if "frac" in r)
    assert short == [(m, f, s, 0.02) for m in ("small", "tiny") for f in (0.25, 0.5, 0.75) for s in (0, 1)]
    assert all(r["arm"] == "muon_mup" for r in rows.values() if "frac" in r)
    rows = full
    sp_small = sorted(r["lr"] for r in rows.values() if (r["arm"], r["model"], r["seed"]) == ("adamw_sp", "small", 0))
    assert sp_small == [0.001, 0.002, 0.004, 0.008]  # swept again around 0.004 x 128/256
    for arm in convergence.ARMS:
        assert len([r for r in rows.values() if (r["arm"], r["model"], r["seed"]) == (arm.name, "tiny", 0)]) >= 4
        for model in ("tiny", "small"):
            assert {r["seed"] for r in rows.values() if (r["arm"], r["model"], r["lr"]) ==
                    (arm.name, model, chosen[(arm.name, model)])} == {0, 1}
    assert len({(r["model"], r["lr"]) for r in rows.values() if r["arm"] == "muon_mup" and r["model"] == "small"}) == 1
    assert rounds <= 3


@pytest.mark.slow
def test_convergence_script_runs_the_trainer_end_to_end(tmp_path):
    """A micro version of the real thing: the trainer trains AdamW (SP) and Muon + μP on a corpus built
    from 120 stdlib files, the sweep settles, the section and both plots are written."""
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"]
    root = tmp_path / "sp"
    for rel in sorted(f for f in os.listdir(stdlib) if f.endswith(".py"))[:120]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(open(os.path.join(stdlib, rel), "rb").read())
    work = tmp_path / "work"
    r = subprocess.run([sys.executable, "scripts/bench/convergence.py", "--quick", "--arms", "adamw_sp,muon_mup",
                        "--steps", "4", "--lr-points", "2", "--seeds", "0", "--max-extend", "0", "--short-fracs", "0.5",
                        "--corpus-root", str(root), "--work",
                        str(work), "--no-write"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| tiny | Muon + μP |" in r.stdout and "| small | AdamW (SP) |" in r.stdout, r.stdout
    results = json.load(open(work / "results.json"))["rows"]
    assert all(row["curve"] == [[4 * 2048 * row.get("frac", 1), row["final"]]] for row in results.values())
    assert sorted(row.get("frac", 1) for row in results.values() if row["arm"] == "muon_mup") == [0.5, 0.5, 1, 1, 1]
    assert len(results) == 9  # 2 lrs per sweep, none added (--max-extend 0), small: AdamW swept again, 2 halves
    assert all(math.isfinite(row["final"]) for row in results.values())
    assert all(row["us_per_token"] > 0 for row in results.values() if "frac" not in row)  # 2+ steps timed
    assert (work / "convergence_quick.png").stat().st_size > 10_000
    assert (work / "convergence_quick_lr.png").stat().st_size > 10_000
