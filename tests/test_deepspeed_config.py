"""Issue 17: what a dist.deepspeed_config may hold (trainer/config/deepspeed.py). The refusals are rows
of tests/test_preflight.py; here, every shipped config passes and the trainer's filling keeps them so."""

import glob
import json
import os

import pytest

from trainer.config.deepspeed import FILLED, check_deepspeed_config
from trainer.run.dist import deepspeed_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "ds_configs", "*.json"))))
def test_shipped_deepspeed_configs_pass_and_are_filled(path):
    check_deepspeed_config(json.load(open(path)), path)
    filled = deepspeed_config(path, micro_batch_size=4, grad_accum=2, world_size=2, grad_clip=1.0, precision="fp32")
    assert {k: filled[k] for k in FILLED} == {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
                                              "train_batch_size": 16, "gradient_clipping": 1.0}
    assert filled["bf16"] == {"enabled": False} and filled["zero_allow_untested_optimizer"] is True
    assert filled["zero_optimization"]["stage"] in (1, 2)
