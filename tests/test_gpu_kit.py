"""The CPU-testable parts of the GPU throughput work (issue 9): padded vocabulary, fused AdamW on CUDA
only, compilation, the data prefetcher and the step metrics."""

import torch

from models import build_model, padded_vocab
from trainer.build import build_model_config
from trainer.config import load_config
from trainer.data.tokenizer import bytes_tokenizer


def test_vocab_is_padded_and_the_export_loads_and_generates(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = bytes_tokenizer()
    assert len(tok) % 128 != 0  # else the test shows nothing
    cfg = load_config("configs/tiny.yaml", ["--data.tokenizer", "bytes", "--train.out_dir", str(tmp_path / "run")])
    mc = build_model_config(cfg, tok)
    assert mc.vocab_size == padded_vocab(len(tok), 128) and mc.vocab_size % 128 == 0 and mc.vocab_size >= len(tok)
    off = load_config("configs/tiny.yaml", ["--data.tokenizer", "bytes", "--model.pad_vocab_multiple", "1",
                                            "--train.out_dir", str(tmp_path / "run")])
    assert build_model_config(off, tok).vocab_size == len(tok)

    model = build_model(mc, seed=0).eval()
    ids = torch.tensor([tok.encode("def f(x):\n    return x")])
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (1, ids.shape[1], mc.vocab_size) and torch.isfinite(out.loss)
    model.save_pretrained(tmp_path / "export")
    tok.save_pretrained(tmp_path / "export")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    tok2 = AutoTokenizer.from_pretrained(tmp_path / "export")
    assert again.config.vocab_size == mc.vocab_size and len(tok2) == len(tok)
    prompt = tok2("def ", return_tensors="pt").input_ids
    gen = again.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=tok2.pad_token_id)
    assert gen.shape == (1, prompt.shape[1] + 5)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, again(ids).logits, atol=1e-6)


def test_padded_vocab():
    assert [padded_vocab(n, 128) for n in (1, 128, 129, 27389)] == [128, 128, 256, 27392]
    assert padded_vocab(27389, 1) == 27389


def test_adamw_is_fused_on_cuda_only(tmp_path):
    from trainer.optim import build_optimizer

    cfg = load_config("configs/tiny.yaml", ["--optim.name", "adamw", "--train.out_dir", str(tmp_path)])
    model = build_model(build_model_config(cfg, bytes_tokenizer()), seed=0)
    gpu, cpu = build_optimizer(model, cfg, cuda=True), build_optimizer(model, cfg, cuda=False)
    assert all(g["fused"] and not g["foreach"] for g in gpu.param_groups)
    assert all(not g["fused"] and g["foreach"] is False for g in cpu.param_groups)
