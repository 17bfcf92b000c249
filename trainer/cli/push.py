"""``scaleout push``: upload an export folder (or a checkpoint, exported first) to the Hub."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from trainer.config.args import OneLineParser
from trainer.config.base import ConfigError
from trainer.config.hub import check_repo_id, check_revision
from trainer.hf.export import export_checkpoint
from trainer.hf.hub import describe_error, push_folder
from trainer.launch.exit_codes import EXIT_USAGE
from trainer.state import checkpoint


def source_kind(path: str) -> str:
    """'export' (a transformers folder), 'checkpoint' (a checkpoint or a run dir); ConfigError otherwise."""
    if not os.path.isdir(path):
        raise ConfigError(f"'{path}' is not a directory; give an export folder (runs/NAME/export), a checkpoint "
                          "(runs/NAME/checkpoints/step_N) or a run dir (runs/NAME)")
    names = set(os.listdir(path))
    if "config.json" in names and any(n.endswith((".safetensors", ".bin", ".index.json")) for n in names):
        return "export"
    if "meta.json" in names and "COMPLETE" in names:
        return "checkpoint"
    if checkpoint.list_checkpoints(os.path.join(path, "checkpoints")):
        return "checkpoint"
    raise ConfigError(f"'{path}' is neither an export folder (config.json + *.safetensors) nor a complete "
                      "checkpoint (meta.json + COMPLETE) nor a run dir with checkpoints/; give one of those")


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="scaleout push", allow_abbrev=False,
                       description="Upload an export folder to the Hugging Face Hub (a checkpoint or run dir is "
                                   "exported first). Token: HF_TOKEN or `hf auth login`; endpoint: HF_ENDPOINT.")
    p.add_argument("path", help="export folder, checkpoint dir (runs/NAME/checkpoints/step_N) or run dir")
    p.add_argument("--repo-id", required=True, help="USER/NAME; created if it does not exist")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", default="main", help="branch to push to; created from main if needed")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        check_repo_id(args.repo_id, "--repo-id")
        check_revision(args.revision, "--revision")
        kind = source_kind(args.path)
    except ConfigError as e:
        sys.stderr.write(f"scaleout push: error: {e}\n")
        return EXIT_USAGE
    with tempfile.TemporaryDirectory(prefix="scaleout-push-") as tmp:
        folder = args.path
        if kind == "checkpoint":
            try:
                weights = export_checkpoint(args.path, tmp, weights="auto")
            except (ConfigError, FileNotFoundError) as e:
                sys.stderr.write(f"scaleout push: error: {' '.join(str(e).split())}\n")
                return EXIT_USAGE
            print(f"exported {args.path} ({weights} weights)", flush=True)
            folder = tmp
        try:
            url = push_folder(folder, args.repo_id, revision=args.revision, private=args.private,
                              message=f"Upload {os.path.basename(os.path.abspath(args.path))} with scaleout")
        except Exception as e:
            sys.stderr.write(f"scaleout push: error: pushing to {args.repo_id}@{args.revision} failed "
                             f"({describe_error(e)})\n")
            return 1
    print(f"pushed {args.path} to {args.repo_id}@{args.revision}: {url}")
    return 0
