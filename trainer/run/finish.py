"""The end of an invocation and the exports along the way: the HF folder with the EMA or raw weights
(``trainer/hf/export.py``), its background push (``trainer/hf/hub.py``), and what to say when the run
stopped early."""

from __future__ import annotations

import os

from models import active_params, count_params
from trainer.hf import hub
from trainer.hf.export import write_export
from trainer.hf.model_card import build_card
from trainer.launch.exit_codes import StorageError
from trainer.run.build import Run
from trainer.state import storage


def export_model(run: Run, out: str, trainer_state: dict) -> str:
    """The export folder (``trainer/hf/export.py``: safetensors, config, generation config, tokenizer, model
    card) with the EMA or the raw weights (``export.weights``); collective. Returns which weights. A failed
    write raises ``StorageError`` (exit 74) on every rank."""
    acc = run.accelerator
    use_ema = run.ema is not None and run.cfg.export.weights in ("auto", "ema")
    state = acc.get_state_dict(run.model)
    if use_ema:
        full = run.ema.assemble()  # the one gather of the EMA shards
        state = {**state, **{n: t.to(state[n].dtype) for n, t in full.items()}} if state is not None else None
    weights = "ema" if use_ema else "raw"
    fault = None
    if acc.is_main_process:
        model = acc.unwrap_model(run.model)
        card = build_card(run.meta, trainer_state, run.model_config, weights, count_params(model),
                          n_active=active_params(model))
        try:
            write_export(out, state, run.model_config, run.tokenizer, card)
        except StorageError as e:  # a failed write: every rank must learn it, not wait for rank 0
            fault = str(e)
    if fault := storage.agree(fault):  # the collective that ends the export on every rank
        raise StorageError(fault)
    return weights


def push_export(run: Run, pusher: hub.HubPusher | None, state: dict) -> None:
    """Export the weights at ``state["step"]`` (collective) and queue the folder for a background push (rank 0)."""
    step = state["step"]
    out = hub.step_export_dir(run.cfg.train.out_dir, step)
    weights = export_model(run, out, state)
    if pusher is not None:
        pusher.submit(out, hub.step_revision(run.cfg.hub, step), f"scaleout: step {step} ({weights} weights)")


def finish(run: Run, state: dict, pusher: hub.HubPusher | None, *, export: bool, resumable: bool,
           wait: bool) -> str:
    """End of an invocation: the final export (pushed to the Hub's main when ``hub.repo_id``) or how
    to resume; then the pending pushes (waited for unless a signal's grace time is running) and the
    background threads. Collective (the export). Returns the export directory."""
    acc, out_dir = run.accelerator, run.cfg.train.out_dir
    export_dir, ckpt_root = os.path.join(out_dir, "export"), os.path.join(out_dir, "checkpoints")
    if export:
        weights = export_model(run, export_dir, state)
        acc.print(f"checkpoints: {ckpt_root}\nexported model ({weights} weights): {export_dir}")
        if pusher is not None:
            pusher.submit(export_dir, "main", f"scaleout: final model, step {state['step']} ({weights} weights)")
    elif resumable:
        acc.print(f"stopped at step {state['step']} of {run.total_steps}; checkpoints: {ckpt_root} "
                  "(run the same command again to resume)")
    if pusher is not None:
        pusher.close(run.cfg.hub.wait_timeout if wait else 0)
    if run.ema is not None:
        run.ema.close()
    run.loader.close()
    return export_dir
