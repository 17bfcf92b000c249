"""Issue 8: every bad input to ``scaleout train`` is ONE stderr line naming the field, exit 2, no worker.

The table runs ``trainer.cli.main`` in-process (fast) with ``subprocess.Popen`` patched to fail the
test, so a row that would have launched ``accelerate launch`` (or anything else) is caught wherever
the launch lives; two rows run as a real subprocess to prove the exit code end to end.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from trainer.cli import dispatch, preflight
from trainer.config import load_config
from trainer.config.base import ConfigError, parse_scalar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCEL = ["--accelerate-config", "accelerate_configs/cpu_2proc_zero2.yaml"]
TINY = "configs/tiny.yaml"


def _write(path, text, mode="w"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, mode) as f:
        f.write(text)


def _checkpoint(root, world_size, partitions=64, old=False):
    """A checkpoint's marker, meta.json and format directory: ``state/`` (elastic) or ``accelerate/`` (old)."""
    os.makedirs(os.path.join(root, "accelerate" if old else "state"))
    _write(os.path.join(root, "COMPLETE"), "10\n")
    _write(os.path.join(root, "meta.json"), json.dumps({"world_size": world_size,
                                                        "config": {"data": {"partitions": partitions}}}))


def _pinned_run(out_dir):
    """A run directory pinned by configs/tiny.yaml (bytes tokenizer), as a run leaves it before its first step."""
    from models import granite_config
    from trainer.data.tokenizer import bytes_tokenizer
    from trainer.state.pinned import write_pin

    cfg = load_config(os.path.join(ROOT, TINY), ["--train.out_dir", out_dir, "--data.tokenizer", "bytes"])
    write_pin(out_dir, tokenizer=bytes_tokenizer(), model_config=granite_config(cfg.model.arch(), 384),
              config=cfg.to_dict(), source=None)


def _pinned_checkpoint(path):
    """A complete checkpoint of such a run, as far as preflight reads one: marker, meta.json (its config),
    tokenizer/ and model_config.json."""
    from models import granite_config
    from trainer.data.tokenizer import bytes_tokenizer

    cfg = load_config(os.path.join(ROOT, TINY), ["--data.tokenizer", "bytes"])
    bytes_tokenizer().save_pretrained(os.path.join(path, "tokenizer"))
    granite_config(cfg.model.arch(), 384).to_json_file(os.path.join(path, "model_config.json"))
    _write(os.path.join(path, "meta.json"), json.dumps({"world_size": 2, "config": cfg.to_dict()}))
    _write(os.path.join(path, "COMPLETE"), "4\n")


def _llama(folder):
    """A stock Llama folder (width 64, 256 positions) with the project's bytes tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainer.data.tokenizer import bytes_tokenizer

    config = LlamaConfig(vocab_size=258, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
    LlamaForCausalLM(config).save_pretrained(folder)
    bytes_tokenizer().save_pretrained(folder)


def _no_silence_inputs(d, accel):
    """Issue 17's inputs that were once accepted in silence: duplicate keys, empty recipes, non-string
    texts, compressed files that cannot be read."""
    import gzip

    _write(f"{d}/dup_key.yaml", "train:\n  steps: 5\noptim:\n  lr: 0.02\ntrain:\n  tokens: 1M\n")
    _write(f"{d}/dup_nested.yaml", "train:\n  steps: 5\n  steps: 6\n")
    _write(f"{d}/accel_dup.yaml", accel + "num_processes: 2\n")
    _write(f"{d}/empty.yaml", "")
    _write(f"{d}/comments.yaml", "# a recipe, one day\n\n")
    null = "".join(json.dumps({"text": t}) + "\n" for t in ["a document " * 9, None, "another " * 9])
    _write(f"{d}/text_null.jsonl", null)
    _write(f"{d}/text_number.jsonl", '{"text": 123}\n' + json.dumps({"text": "a document " * 9}) + "\n")
    _write(f"{d}/text_null.jsonl.gz", gzip.compress(null.encode()), "wb")
    _write(f"{d}/fake.jsonl.gz", "this is not gzip\n")
    _write(f"{d}/a.jsonl.zst", b"(\xb5/\xfd not really zstd", "wb")
    _write(f"{d}/b.parquet.gz", gzip.compress(b"PAR1"), "wb")
    good = "".join(json.dumps({"text": f"document {i} " * 20}) + "\n" for i in range(8))
    _write(f"{d}/good.jsonl.gz", gzip.compress(good.encode()), "wb")


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    """One folder of bad (and good) inputs shared by every row."""
    d = str(tmp_path_factory.mktemp("bad"))
    tiny = open(os.path.join(ROOT, TINY)).read()
    accel = open(os.path.join(ROOT, ACCEL[1])).read()
    _write(f"{d}/syntax.yaml", "train:\n  steps: 5\n optim: [\n")
    _write(f"{d}/both.yaml", "train:\n  steps: 5\n  tokens: 2B\n")
    _write(f"{d}/list.yaml", "- train\n- optim\n")
    _write(f"{d}/section.yaml", "train: 5\n")
    _write(f"{d}/nan.yaml", tiny.replace("lr: 0.02", "lr: .nan"))
    _write(f"{d}/inf.yaml", tiny.replace("adamw_lr: 0.006", "adamw_lr: .inf"))
    _write(f"{d}/short_floats.yaml", tiny.replace("lr: 0.02", "lr: 2e-2").replace("adamw_lr: 0.006", "adamw_lr: 6e-3"))
    os.makedirs(f"{d}/a_dir")
    _write(f"{d}/accel_syntax.yaml", "num_processes: [2\n")
    _write(f"{d}/accel_list.yaml", "- 2\n")
    _write(f"{d}/accel_unknown.yaml", accel + "bogus_key: 1\n")
    _write(f"{d}/accel_type.yaml", accel.replace("distributed_type: DEEPSPEED", "distributed_type: DEEPSPEEED"))
    _write(f"{d}/accel_np0.yaml", accel.replace("num_processes: 2", "num_processes: 0"))
    _write(f"{d}/ds_bad.json", '{"zero_optimization": {"stage": 2,}\n')
    z2 = json.load(open(os.path.join(ROOT, "ds_configs", "zero2.json")))  # issue 17: settings the trainer refuses
    zero = z2["zero_optimization"]
    for name, change in {"zero3": {"zero_optimization": {**zero, "stage": 3}}, "no_stage": {"zero_optimization": {}},
                         "optimizer": {"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}},
                         "scheduler": {"scheduler": {"type": "WarmupLR"}},
                         "offload_param": {"zero_optimization": {**zero, "offload_param": {"device": "cpu"}}},
                         "offload_opt": {"zero_optimization": {**zero, "offload_optimizer": {"device": "cpu"}}},
                         "unknown": {"communication_data_type": "bf16"},
                         "unknown_zero": {"zero_optimization": {**zero, "round_robin_gradients": True}},
                         "clip": {"gradient_clipping": 1.0}, "batch": {"train_batch_size": 64},
                         "accum": {"gradient_accumulation_steps": 4}, "bf16": {"bf16": {"enabled": True}},
                         "fp16": {"fp16": {"enabled": True}}}.items():
        _write(f"{d}/ds_{name}.json", json.dumps({**z2, **change}))
    _write(f"{d}/empty.jsonl", "")
    _write(f"{d}/empty_dir/a.txt", "")
    _write(f"{d}/empty_dir/b.txt", "")
    _write(f"{d}/blank.jsonl", '{"text": ""}\n' * 3)
    _write(f"{d}/binary.jsonl", bytes(range(256)) * 8, "wb")
    _write(f"{d}/nofield.jsonl", '{"content": "def f(): pass"}\n' * 3)
    _write(f"{d}/malformed.jsonl", '{"text": "a"}\n{"text": "b"}\n{"text": "c"\n{"text": "d"}\n')
    _write(f"{d}/good.jsonl", "".join(json.dumps({"text": f"document {i} " * 20}) + "\n" for i in range(8)))
    _write(f"{d}/binary.txt", bytes(range(256)) * 8, "wb")
    _write(f"{d}/garbage.parquet", "this is not parquet\n")
    _no_silence_inputs(d, accel)
    _write(f"{d}/tok_random.json", "hello, not a tokenizer\n")
    _write(f"{d}/out_file", "a regular file\n")
    _write(f"{d}/gpt2/config.json", json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    _llama(f"{d}/llama")
    _checkpoint(f"{d}/ckpt_old/step_000010", 2, old=True)
    _checkpoint(f"{d}/run_old/checkpoints/step_000010", 2, old=True)
    _checkpoint(f"{d}/ckpt_p6/step_000010", 2, partitions=6)
    _pinned_run(f"{d}/pinned_run")
    _write(f"{d}/vit/config.json", json.dumps({"model_type": "vit"}))
    _write(f"{d}/mistral.json", json.dumps({"model_type": "mistral", "hidden_size": 64, "intermediate_size": 128,
                                            "num_hidden_layers": 2, "num_attention_heads": 4,
                                            "num_key_value_heads": 2, "max_position_embeddings": 512}))
    _pinned_checkpoint(f"{d}/pinned_ckpt/checkpoints/step_000004")
    return d


# (row id, argv after `train` with {d} for the fixture folder, text the one line must contain)
BAD = [
    # files: YAML syntax, directories, malformed accelerate and DeepSpeed configs
    ("recipe-yaml-syntax", ["{d}/syntax.yaml"], "syntax.yaml' line 3"),
    ("recipe-missing", ["{d}/nope.yaml"], "recipe"),
    ("recipe-is-dir", ["{d}/a_dir"], "is a directory"),
    ("recipe-not-mapping", ["{d}/list.yaml"], "recipe"),
    ("recipe-section-not-mapping", ["{d}/section.yaml"], "'train'"),
    ("accel-missing", [TINY, "--accelerate-config", "{d}/nope.yaml"], "--accelerate-config"),
    ("accel-is-dir", [TINY, "--accelerate-config", "{d}/a_dir"], "--accelerate-config"),
    ("accel-yaml-syntax", [TINY, "--accelerate-config", "{d}/accel_syntax.yaml"], "--accelerate-config"),
    ("accel-not-mapping", [TINY, "--accelerate-config", "{d}/accel_list.yaml"], "--accelerate-config"),
    ("accel-unknown-key", [TINY, "--accelerate-config", "{d}/accel_unknown.yaml"], "bogus_key"),
    ("accel-bad-type", [TINY, "--accelerate-config", "{d}/accel_type.yaml"], "--accelerate-config"),
    ("accel-num-processes-0", [TINY, "--accelerate-config", "{d}/accel_np0.yaml"], "num_processes"),
    ("accel-twice", [TINY, *ACCEL, *ACCEL], "--accelerate-config"),
    ("ds-config-is-dir", [TINY, "--dist.deepspeed_config", "{d}/a_dir"], "dist.deepspeed_config"),
    ("ds-config-missing", [TINY, "--dist.deepspeed_config", "{d}/nope.json"], "dist.deepspeed_config"),
    ("ds-config-bad-json", [TINY, "--dist.deepspeed_config", "{d}/ds_bad.json"], "dist.deepspeed_config"),
    # data: opened with the loader's Source, first records read and tokenized
    ("data-missing", [TINY, "--data.source", "{d}/nope.jsonl"], "data.source"),
    ("data-empty-file", [TINY, "--data.source", "{d}/empty.jsonl"], "is empty"),
    ("data-empty-dir-of-files", [TINY, "--data.source", "{d}/empty_dir"], "is empty"),
    ("data-only-empty-texts", [TINY, "--data.source", "{d}/blank.jsonl"], "no non-empty documents"),
    ("data-binary-jsonl", [TINY, "--data.source", "{d}/binary.jsonl"], "binary.jsonl' is binary"),
    ("data-dir-without-data", [TINY, "--data.source", "{d}/a_dir"], "data.source"),
    ("data-no-text-field", [TINY, "--data.source", "{d}/nofield.jsonl"], "data.text_field"),
    ("data-wrong-text-field", [TINY, "--data.source", "{d}/good.jsonl", "--data.text_field", "body"],
     "data.text_field"),
    ("data-malformed-record", [TINY, "--data.source", "{d}/malformed.jsonl"], "malformed.jsonl' line 3"),
    ("data-binary", [TINY, "--data.source", "{d}/binary.txt"], "binary.txt' is binary"),
    ("data-json-as-parquet", [TINY, "--data.source", "{d}/good.jsonl", "--data.format", "parquet"],
     "data.format to json"),
    ("data-garbage-parquet", [TINY, "--data.source", "{d}/garbage.parquet"], "data.source"),
    ("data-format-unknown", [TINY, "--data.format", "csv"], "data.format"),
    ("data-tokenizer-empty-dir", [TINY, "--data.tokenizer", "{d}/a_dir"], "data.tokenizer"),
    ("data-tokenizer-random-file", [TINY, "--data.tokenizer", "{d}/tok_random.json"], "data.tokenizer"),
    ("data-tokenizer-missing", [TINY, "--data.tokenizer", "{d}/nope"], "data.tokenizer"),
    ("data-val-every-1", [TINY, "--data.val_every", "1"], "data.val_every"),
    ("data-vocab-tiny", [TINY, "--data.vocab_size", "10"], "data.vocab_size"),
    ("data-seed-negative", [TINY, "--data.seed", "-1"], "data.seed"),
    # train.tokens, run directory, counts
    ("tokens-2X", [TINY, "--train.tokens", "2X"], "train.tokens"),
    ("tokens-abc", [TINY, "--train.tokens", "abc"], "train.tokens"),
    ("tokens-negative", [TINY, "--train.tokens", "-5M"], "cannot parse token count '-5M'"),
    ("tokens-zero", [TINY, "--train.tokens", "0"], "train.tokens"),
    ("tokens-inf", [TINY, "--train.tokens", "inf"], "train.tokens"),
    ("out-dir-is-file", [TINY, "--train.out_dir", "{d}/out_file"], "train.out_dir"),
    ("out-dir-under-file", [TINY, "--train.out_dir", "{d}/out_file/run"], "train.out_dir"),
    ("out-dir-not-writable", [TINY, "--train.out_dir", "/proc/scaleout-run"], "train.out_dir"),
    ("log-every-0", [TINY, "--log.every", "0"], "log.every"),
    ("eval-batches-0", [TINY, "--train.eval_batches", "0"], "train.eval_batches"),
    ("num-processes-0", [TINY, "--num-processes", "0"], "--num-processes"),
    ("num-processes-negative", [TINY, "--num-processes", "-2"], "--num-processes"),
    ("num-processes-abc", [TINY, "--num-processes", "abc"], "--num-processes"),
    ("machine-rank-abc", [TINY, "--machine-rank", "abc"], "--machine-rank"),
    # NaN / inf, on the command line and in a recipe
    ("lr-nan", [TINY, "--optim.lr", "nan"], "optim.lr"),
    ("lr-inf", [TINY, "--optim.lr", ".inf"], "optim.lr"),
    ("lr-nan-yaml", [TINY, "--optim.lr", ".nan"], "optim.lr"),
    ("recipe-nan", ["{d}/nan.yaml"], "optim.lr"),
    ("recipe-inf", ["{d}/inf.yaml"], "optim.adamw_lr"),
    ("grad-clip-nan", [TINY, "--train.grad_clip", ".nan"], "train.grad_clip"),
    ("betas-nan", [TINY, "--optim.adamw_betas", "[0.9, .nan]"], "optim.adamw_betas"),
    ("mup-std-inf", [TINY, "--mup.base_std", "-.inf"], "'mup.base_std' must be a finite number"),
    ("min-lr-ratio-inf", [TINY, "--train.min_lr_ratio", ".inf"], "train.min_lr_ratio"),
    # values that make no sense
    ("warmup-negative", [TINY, "--train.warmup_steps", "-1"], "train.warmup_steps"),
    ("grad-clip-negative", [TINY, "--train.grad_clip", "-1"], "train.grad_clip"),
    ("eval-every-negative", [TINY, "--train.eval_every", "-5"], "train.eval_every"),
    ("tokens-per-step-0", [TINY, "--train.tokens_per_step", "0"], "train.tokens_per_step"),
    ("tokens-per-step-indivisible", [TINY, "--train.tokens_per_step", "1000"], "train.tokens_per_step"),
    ("grad-accum-0", [TINY, "--train.grad_accum", "0"], "train.grad_accum"),
    ("stop-at-step-0", [TINY, "--train.stop_at_step", "0"], "train.stop_at_step"),
    ("steps-0", [TINY, "--train.steps", "0"], "train.steps"),
    ("ckpt-keep-0", [TINY, "--checkpoint.keep", "0"], "checkpoint.keep"),
    ("ckpt-every-negative", [TINY, "--checkpoint.every", "-1"], "checkpoint.every"),
    ("weight-decay-negative", [TINY, "--optim.weight_decay", "-1e-2"], "optim.weight_decay must be >= 0"),
    ("adamw-eps-0", [TINY, "--optim.adamw_eps", "0"], "optim.adamw_eps"),
    ("lr-negative", [TINY, "--optim.lr", "-2e-5"], "optim.lr must be > 0, got -2e-05"),
    ("precision-fp16", [TINY, "--train.precision", "fp16"], "train.precision"),
    # model overrides
    ("d-model-not-div-heads", [TINY, "--model.d_model", "130"], "model.d_model"),
    ("heads-not-div-kv", [TINY, "--model.n_kv_heads", "3"], "model.n_kv_heads"),
    ("head-dim-odd", [TINY, "--model.d_model", "12", "--model.n_heads", "4", "--model.n_kv_heads", "4"],
     "model.d_model"),
    ("n-heads-0", [TINY, "--model.n_heads", "0"], "model.n_heads"),
    ("n-layers-0", [TINY, "--model.n_layers", "0"], "model.n_layers"),
    ("d-ff-negative", [TINY, "--model.d_ff", "-1"], "model.d_ff"),
    ("max-seq-len-below-curriculum", [TINY, "--model.max_seq_len", "64"], "model.max_seq_len"),
    ("preset-unknown", [TINY, "--model.preset", "7b"], "model.preset"),
    # resume: the format before elastic resume, other data partitions, a world size that does not divide them
    ("resume-path-old-format", [TINY, "--checkpoint.resume", "{d}/ckpt_old/step_000010"], "format before elastic"),
    ("resume-auto-old-format", [TINY, "--train.out_dir", "{d}/run_old"], "--checkpoint.resume null"),
    ("resume-other-partitions", [TINY, "--checkpoint.resume", "{d}/ckpt_p6/step_000010"], "--data.partitions 6"),
    ("partitions-not-divisible", [TINY, "--data.partitions", "3"], "data.partitions=3 is not divisible"),
    ("resume-not-checkpoint", [TINY, "--checkpoint.resume", "{d}/a_dir"], "checkpoint.resume"),
    # the audit: what else users type
    ("curriculum-no-colon", [TINY, "--data.curriculum", "128"], "data.curriculum"),
    ("curriculum-bad-len", [TINY, "--data.curriculum", "abc:inf"], "data.curriculum"),
    ("curriculum-not-open-ended", [TINY, "--data.curriculum", "128:2M"], "data.curriculum"),
    ("curriculum-decreasing", [TINY, "--data.curriculum", "128:2M,64:1M,256:inf"], "data.curriculum"),
    ("curriculum-len-0", [TINY, "--data.curriculum", "0:inf"], "data.curriculum"),
    ("curriculum-empty", [TINY, "--data.curriculum", ","], "data.curriculum"),
    ("steps-twice", [TINY, "--train.steps", "5", "--train.steps", "7"], "--train.steps"),
    ("steps-twice-equals", [TINY, "--train.steps=5", "--train.steps=7"], "--train.steps"),
    ("config-flag", ["--config", TINY], "--config"),
    ("flag-without-value-end", [TINY, "--train.steps"], "--train.steps"),
    ("flag-without-value-mid", [TINY, "--train.steps", "--optim.lr", "0.1"], "--train.steps"),
    ("abbreviated-flag", [TINY, "--train.step", "5"], "train.steps"),
    ("abbreviated-launcher-flag", [TINY, "--num-proc", "2"], "did you mean --num-processes?"),
    ("unknown-key", [TINY, "--optim.lrr", "0.1"], "optim.lrr"),
    ("unknown-section", [TINY, "--nosuch.key", "1"], "nosuch.key"),
    ("override-yaml-syntax", [TINY, "--optim.adamw_betas", "[0.9,"], "--optim.adamw_betas"),
    ("two-recipes", [TINY, "configs/125m.yaml"], "configs/125m.yaml"),
    ("bool-for-int", [TINY, "--train.steps", "true"], "train.steps"),
    ("str-for-float", [TINY, "--optim.lr", "fast"], "optim.lr"),
    ("list-for-float", [TINY, "--optim.lr", "[1]"], "optim.lr"),
    ("steps-and-tokens-in-recipe", ["{d}/both.yaml"], "train.steps"),
    ("optim-name", [TINY, "--optim.name", "sgd"], "optim.name"),
    ("tracker-unknown", [TINY, "--log.trackers", "[wandbb]"], "log.trackers"),
    ("tracker-not-list", [TINY, "--log.trackers", "wandb"], "log.trackers"),
    ("text-unit", [TINY, "--data.text_unit", "para"], "data.text_unit"),
    ("source-empty-string", [TINY, "--data.source", "''"], "data.source"),
    ("mup-base-width-0", [TINY, "--mup.base_width", "0"], "mup.base_width"),
    ("mup-class-override", [TINY, "--mup.class_overrides", "{lm_head.weight: output}"], "mup.class_overrides"),
    ("curriculum-sexagesimal", [TINY, "--data.curriculum", "512:60"], "data.curriculum"),
    # issue 10: init.from (a model folder or Hub id) and a separate validation source
    ("init-missing", [TINY, "--init.from", "{d}/nope_model"], "init.from: '{d}/nope_model' not found"),
    ("init-no-config", [TINY, "--init.from", "{d}/a_dir"], "init.from: '{d}/a_dir' has no config.json"),
    ("init-is-file", [TINY, "--init.from", "{d}/good.jsonl"], "init.from: '{d}/good.jsonl' is a file"),
    ("init-gpt2", [TINY, "--init.from", "{d}/gpt2"], "is a 'gpt2' model (GPT2LMHeadModel)"),
    ("init-hub-missing", [TINY, "--init.from", "nosuch-org/nosuch-model"], "init.from: 'nosuch-org/nosuch-model'"),
    ("init-conflicting-d-model", [TINY, "--init.from", "{d}/llama", "--model.d_model", "128"],
     "model.d_model: 128 conflicts with init.from"),
    ("init-mup-cannot-apply", [TINY, "--init.from", "{d}/llama"], "mup.base_width 64 would match"),
    ("init-curriculum-too-long", [TINY, "--init.from", "{d}/llama", "--mup.enabled", "false",
                                  "--data.curriculum", "512:inf"], "model's max positions (256)"),
    ("val-source-missing", [TINY, "--data.val_source", "{d}/nope.jsonl"], "data.val_source: '{d}/nope.jsonl'"),
    ("val-source-binary", [TINY, "--data.val_source", "{d}/binary.txt"], "data.val_source: '{d}/binary.txt' is binary"),
    ("val-source-no-text-field", [TINY, "--data.val_source", "{d}/nofield.jsonl"], "data.val_source"),
    ("val-source-empty", [TINY, "--data.val_source", "''"], "data.val_source"),
    # issue 18: model.type
    ("model-type-unknown", [TINY, "--model.type", "mistral"], "model.type 'mistral' is unknown; choose one of granite"),
    ("model-type-mup", [TINY, "--model.type", "llama"], "mup.enabled: model.type llama's class has no muP"),
    ("sliding-window-without-swa", [TINY, "--model.sliding_window", "64"], "model.sliding_window"),
    ("model-type-conflicts-with-init", [TINY, "--init.from", "{d}/llama", "--model.type", "qwen3",
                                        "--mup.enabled", "false"], "model.type: qwen3 conflicts with init.from"),
    ("model-config-missing", [TINY, "--model.config", "{d}/nope.json"], "model.config: '{d}/nope.json' not found"),
    ("model-config-not-causal-lm", [TINY, "--model.config", "{d}/vit"], "is a 'vit' config, which has no causal-LM"),
    ("model-config-not-a-config", [TINY, "--model.config", "{d}/good.jsonl"], "model.config: '{d}/good.jsonl': not"),
    ("model-config-with-size", [TINY, "--model.config", "{d}/mistral.json", "--mup.enabled", "false",
                                "--model.d_model", "128"], "model.d_model: the architecture comes from model.config"),
    ("model-config-mup", [TINY, "--model.config", "{d}/mistral.json"],
     "mup.enabled: model.config's class mistral has no muP"),
    ("experts-one", [TINY, "--model.type", "granitemoe", "--model.experts", "1"], "model.experts must be >= 2"),
    ("top-k-over-experts", [TINY, "--model.type", "granitemoe", "--model.experts", "4", "--model.experts_per_token",
                            "5"], "model.experts_per_token must be between 1 and model.experts (4), got 5"),
    ("experts-on-a-dense-class", [TINY, "--model.experts", "4"], "model.experts is for mixture-of-experts classes"),
    ("shared-experts-without-them", [TINY, "--model.type", "granitemoe", "--model.shared_experts", "2"],
     "model.shared_experts: granitemoe has no shared experts"),
    ("moe-mup-deepseek", [TINY, "--model.type", "deepseek_v3"], "mup.enabled: model.type deepseek_v3's class has no"),
    ("aux-loss-negative", [TINY, "--model.aux_loss_coef", "-0.1"], "model.aux_loss_coef must be >= 0"),
    # issue 19: fp16
    ("fp16-under-deepspeed-on-cpu", [TINY, "--train.precision", "fp16"],
     "train.precision fp16 under DeepSpeed (dist.deepspeed_config) needs a GPU"),
    ("precision-unknown", [TINY, "--train.precision", "fp8"], "train.precision must be auto, fp32, bf16 or fp16"),
    ("ns-method-unknown", [TINY, "--optim.ns_method", "newton"], "optim.ns_method must be one of quintic"),
    ("kv-heads-on-mla", [TINY, "--model.type", "deepseek_v3", "--mup.enabled", "false", "--model.n_kv_heads", "2"],
     "model.n_kv_heads: deepseek_v3's latent attention has no key/value head count"),
    # issue 17: a resumed run keeps what is pinned in its run directory
    ("resume-vocab-size-changed", [TINY, "--train.out_dir", "{d}/pinned_run", "--data.tokenizer", "bytes",
                                   "--data.vocab_size", "2048"],
     "data.vocab_size: the run in '{d}/pinned_run' is pinned to 4096, this command gives 2048"),
    ("resume-tokenizer-changed", [TINY, "--train.out_dir", "{d}/pinned_run"],
     "data.tokenizer: the run in '{d}/pinned_run' is pinned to 'bytes', this command gives 'bpe'"),
    ("resume-d-model-changed", [TINY, "--train.out_dir", "{d}/pinned_run", "--data.tokenizer", "bytes",
                                "--model.d_model", "256"],
     "model.d_model: the run in '{d}/pinned_run' is pinned to 128 (model.preset 'tiny'), this command gives 256"),
    ("resume-tokens-per-step-changed", [TINY, "--train.out_dir", "{d}/pinned_run", "--data.tokenizer", "bytes",
                                        "--train.tokens_per_step", "8192"],
     "--init.from {d}/pinned_run/checkpoints/step_N --train.out_dir NEW_DIR"),
    ("resume-optim-name-changed", [TINY, "--train.out_dir", "{d}/pinned_run", "--data.tokenizer", "bytes",
                                   "--optim.name", "adamw"],
     "optim.name: the run in '{d}/pinned_run' is pinned to 'muon'"),
    ("resume-path-precision-changed", [TINY, "--checkpoint.resume", "{d}/pinned_ckpt/checkpoints/step_000004",
                                       "--data.tokenizer", "bytes", "--train.precision", "bf16"],
     "train.precision: the run in '{d}/pinned_ckpt' is pinned to 'auto'"),
    # issue 17: storage (free space for checkpoints)
    ("checkpoint-space-for-keep", [TINY, "--checkpoint.keep", "1000000000", "--train.out_dir", "{d}/space"],
     "train.out_dir: '{d}/space' has "),  # a billion kept ~20 MB checkpoints: 20 PB, more than any disk
    # issue 17: no silence (YAML keys, records, trackers, compressed sources)
    ("recipe-duplicate-section", ["{d}/dup_key.yaml"],
     "dup_key.yaml': duplicate key 'train' at line 5 (first at line 1)"),
    ("recipe-duplicate-key", ["{d}/dup_nested.yaml"], "duplicate key 'steps' at line 3 (first at line 2)"),
    ("accel-duplicate-key", [TINY, "--accelerate-config", "{d}/accel_dup.yaml"],
     "--accelerate-config '{d}/accel_dup.yaml': duplicate key 'num_processes'"),
    ("override-duplicate-key", [TINY, "--optim.adamw_betas", "{a: 1, a: 2}"], "--optim.adamw_betas: duplicate key"),
    ("recipe-empty", ["{d}/empty.yaml"], "recipe '{d}/empty.yaml' is empty"),
    ("recipe-only-comments", ["{d}/comments.yaml"], "recipe '{d}/comments.yaml' is empty"),
    ("data-text-null", [TINY, "--data.source", "{d}/text_null.jsonl"],
     "data.source: '{d}/text_null.jsonl' line 2 has 'text': null, not a string"),
    ("data-text-number", [TINY, "--data.source", "{d}/text_number.jsonl"],
     "data.source: '{d}/text_number.jsonl' line 1 has 'text': 123, not a string"),
    ("val-source-text-null", [TINY, "--data.val_source", "{d}/text_null.jsonl"],
     "data.val_source: '{d}/text_null.jsonl' line 2 has 'text': null"),
    ("data-gz-text-null", [TINY, "--data.source", "{d}/text_null.jsonl.gz"], "text_null.jsonl.gz' line 2"),
    ("tracker-package-missing", [TINY, "--log.trackers", "[tensorboard]"],
     "log.trackers: tracker 'tensorboard' needs its package, which is not installed; pip install tensorboard"),
    ("data-gz-not-gzip", [TINY, "--data.source", "{d}/fake.jsonl.gz"], "fake.jsonl.gz' does not decompress as gzip"),
    ("data-zst-without-zstandard", [TINY, "--data.source", "{d}/a.jsonl.zst"], "pip install zstandard"),
    ("data-parquet-gz", [TINY, "--data.source", "{d}/b.parquet.gz"], "b.parquet.gz' is a compressed parquet file"),
    # issue 17: DeepSpeed settings the trainer does not honour, a model that cannot fit
    ("ds-zero3", [TINY, "--dist.deepspeed_config", "{d}/ds_zero3.json"], "zero_optimization.stage 3"),
    ("ds-no-stage", [TINY, "--dist.deepspeed_config", "{d}/ds_no_stage.json"], "has no zero_optimization.stage"),
    ("ds-optimizer-block", [TINY, "--dist.deepspeed_config", "{d}/ds_optimizer.json"], "'optimizer'; DeepSpeed's"),
    ("ds-scheduler-block", [TINY, "--dist.deepspeed_config", "{d}/ds_scheduler.json"], "set train.schedule"),
    ("ds-offload-param", [TINY, "--dist.deepspeed_config", "{d}/ds_offload_param.json"],
     "zero_optimization.offload_param; parameter offload"),
    ("ds-offload-optimizer", [TINY, "--dist.deepspeed_config", "{d}/ds_offload_opt.json"],
     "zero_optimization.offload_optimizer"),
    ("ds-unknown-key", [TINY, "--dist.deepspeed_config", "{d}/ds_unknown.json"],
     "sets 'communication_data_type', which the trainer does not honour; remove it"),
    ("ds-unknown-zero-key", [TINY, "--dist.deepspeed_config", "{d}/ds_unknown_zero.json"],
     "zero_optimization.round_robin_gradients, which the trainer does not honour"),
    ("ds-grad-clip-set", [TINY, "--dist.deepspeed_config", "{d}/ds_clip.json"], "set train.grad_clip"),
    ("ds-batch-set", [TINY, "--dist.deepspeed_config", "{d}/ds_batch.json"], "set train.tokens_per_step"),
    ("ds-accum-set", [TINY, "--dist.deepspeed_config", "{d}/ds_accum.json"], "set train.grad_accum"),
    ("ds-bf16-set", [TINY, "--dist.deepspeed_config", "{d}/ds_bf16.json"], "set train.precision"),
    ("ds-fp16-on", [TINY, "--dist.deepspeed_config", "{d}/ds_fp16.json"], "'fp16'; the trainer sets mixed precision"),
    ("model-does-not-fit", [TINY, "--train.tokens_per_step", "1073741824"], "model: the run needs ~"),  # TBs of
    # activations on any device, a small checkpoint; the 1b preset at 2 CPU processes: tests/test_memory.py
]


def _run_main(argv, capsys):
    try:
        rc = dispatch.main(argv)
    except SystemExit as e:  # argparse's own errors exit through OneLineParser.error
        rc = e.code
    return rc, capsys.readouterr()


@pytest.mark.parametrize("argv, needle", [(argv, needle) for _, argv, needle in BAD], ids=[r[0] for r in BAD])
def test_bad_input_is_one_line_exit_2(argv, needle, d, no_launch, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = [a.replace("{d}", d) for a in argv]
    if "--accelerate-config" not in argv:
        argv += ACCEL
    rc, out = _run_main(["train", *argv], capsys)
    lines = out.err.splitlines()
    assert rc == 2, out.err
    assert len(lines) == 1, out.err
    assert lines[0].startswith("scaleout train: error: "), lines[0]
    assert needle.replace("{d}", d) in lines[0], lines[0]
    assert not no_launch
    assert "Traceback" not in out.err and out.out == ""


def test_machine_flags_need_the_launcher(capsys, no_launch, monkeypatch):
    """--num-machines/--machine-rank/... are passed to `accelerate launch`: without --accelerate-config
    there is nothing to pass them to."""
    monkeypatch.chdir(ROOT)
    rc, out = _run_main(["train", TINY, "--machine-rank", "1"], capsys)
    assert rc == 2 and out.err.splitlines() == [
        "scaleout train: error: --machine-rank needs --accelerate-config (it is passed to accelerate launch); "
        "or run `accelerate launch --num_machines ...` yourself"], out.err
    assert not no_launch


def test_unknown_command_is_one_line(capsys, no_launch):
    rc, out = _run_main(["trian", TINY], capsys)
    assert rc == 2 and out.err.splitlines() == ["scaleout: error: unknown command 'trian'; choose one of "
                                                + ", ".join(dispatch.COMMANDS)]
    assert {"train", "export", "generate", "eval"} <= set(dispatch.COMMANDS)


# ---- accepted: short-form floats, in a recipe and on the command line


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("6e-3", 6e-3), ("1e6", 1e6), ("-2e-5", -2e-5),
                                         ("1.5e3", 1500.0), ("[1e-3, 2]", [1e-3, 2]), ("10", 10), ("2B", "2B")])
def test_short_floats_parse(text, value):
    assert parse_scalar(text) == value


def test_short_floats_on_command_line():
    cfg = load_config(os.path.join(ROOT, TINY), ["--optim.lr", "1e-3", "--optim.adamw_lr=6e-3",
                                                 "--train.tokens", "1e6", "--optim.adamw_eps", "1e-10"])
    assert (cfg.optim.lr, cfg.optim.adamw_lr, cfg.optim.adamw_eps) == (1e-3, 6e-3, 1e-10)
    assert cfg.train.tokens == "1000000.0" and cfg.train.steps is None


def test_short_floats_in_recipe(d):
    cfg = load_config(f"{d}/short_floats.yaml")
    assert (cfg.optim.lr, cfg.optim.adamw_lr) == (0.02, 0.006)


def test_short_floats_through_cli(d, capsys, no_launch, monkeypatch):
    monkeypatch.chdir(ROOT)
    rc, out = _run_main(["train", f"{d}/short_floats.yaml", "--optim.lr", "1e-3", *ACCEL, "--print-config"], capsys)
    assert rc == 0 and "lr: 0.001" in out.out and "adamw_lr: 0.006" in out.out, out.err


def test_good_local_sources_pass_preflight(d, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a document " * 10] * 4}), str(tmp_path / "good.parquet"))
    shutil.copy(os.path.join(ROOT, "trainer", "cli", "preflight.py"), tmp_path / "code.py")
    for source in (f"{d}/good.jsonl", str(tmp_path / "good.parquet"), str(tmp_path / "code.py"), f"{d}/good.jsonl.gz"):
        cfg = load_config(os.path.join(ROOT, TINY), ["--data.source", source, "--train.out_dir", str(tmp_path),
                                                     "--data.tokenizer", "bytes"])
        preflight.preflight(cfg, 2)
    with pytest.raises(ConfigError, match="data.tokenizer"):
        preflight.preflight(load_config(None, ["--data.tokenizer", f"{d}/tok_random.json"]), 1)


# ---- end to end: the real exit code of the real command


@pytest.mark.parametrize("args, needle", [
    (["{d}/syntax.yaml"], "line 3"),
    ([TINY, "--checkpoint.resume", "{d}/ckpt_old/step_000010"], "--checkpoint.resume null"),
])
@pytest.mark.exits_before_launch
def test_subprocess_exit_2(args, needle, d):
    argv = [a.replace("{d}", d) for a in args]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "trainer.cli", "train", *argv, *ACCEL], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
