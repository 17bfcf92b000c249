"""Experiment tracking that follows the run: one wandb run across preemptions and resumes.

``start(run, state)`` opens the ``log.trackers`` (accelerate trackers; they log on the main process
only) after the checkpoint is restored; ``Tracker.log`` sends a step's metrics; ``Tracker.finish``
closes them and, for an offline wandb run, prints the ``wandb sync`` command once.

wandb specifics:

- The run id lives in the trainer state (``state["wandb_run_id"]``, saved in ``trainer.json`` with
  every checkpoint). A resumed run re-opens the same id (``resume="allow"``), so a preempted and
  requeued job is one wandb run whose step counter continues. A fresh run gets a new id, made on
  rank 0 and broadcast, so every rank's state holds the same one.
- Mode: ``WANDB_MODE`` when set; otherwise online with credentials (``WANDB_API_KEY`` or a netrc
  entry for the API host), offline without. Online first checks that the API host
  (``WANDB_BASE_URL``, default api.wandb.ai) answers an HTTP request within a few seconds; when it
  does not, or ``wandb.init`` still fails (a proxy that answers for everything, a bad key), the run
  logs offline with one warning line instead of crashing or hanging in wandb's retries.
- The config is the resolved recipe, flattened (``optim.lr``); a key that names a secret or a value
  equal to one of the secret environment variables is left out. The key itself is never read into
  anything we log or write.
"""

from __future__ import annotations

import glob
import netrc
import os
import shlex
import threading
from urllib.parse import urlparse

from trainer.config.base import ConfigError

DEFAULT_BASE_URL = "https://api.wandb.ai"
REACH_TIMEOUT_S = 3.0  # one HTTP request (DNS, connect, TLS included) to the API host before an online init
INIT_TIMEOUT_S = 20.0  # wandb.init's own limit once the host answered (WANDB_INIT_TIMEOUT overrides)
SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
_SECRET_NAMES = ("token", "api_key", "apikey", "secret", "password")
STATE_KEY = "wandb_run_id"


def check_trackers(trackers: list[str]) -> None:
    """``log.trackers`` names only trackers ``accelerate`` knows (its ``log_with``) and can open here;
    ConfigError otherwise. A tracker whose package is missing would only be a warning from accelerate
    in the middle of the log, and the run would log nothing, so it is refused here, naming the package.
    Availability is accelerate's own (``get_available_trackers``), so the two cannot disagree."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    names = [t.value for t in LoggerType]
    available = {str(t) for t in get_available_trackers()}
    pip_name = {"comet_ml": "comet-ml", "aim": "'aim<4'"}  # where it differs (accelerate's AimTracker: aim < 4)
    for t in trackers:
        if t not in names:
            raise ConfigError(f"log.trackers: unknown tracker {t!r}; choose from {', '.join(names)} or []")
        if t != "all" and t not in available:
            raise ConfigError(f"log.trackers: tracker {t!r} needs its package, which is not installed; "
                              f"pip install {pip_name.get(t, t)}, or remove {t!r} from log.trackers")


class Tracker:
    """What the loop talks to. Without trackers every method does nothing."""

    def __init__(self, accelerator, wandb_mode: str | None = None, wandb_dir: str | None = None,
                 run_id: str | None = None):
        self.accelerator, self.wandb_mode, self.wandb_dir, self.run_id = accelerator, wandb_mode, wandb_dir, run_id
        self.failed = False  # a write has failed (said once)

    def log(self, metrics: dict, step: int) -> None:
        """Send a step's metrics. A tracker that fails to write (full disk, I/O error, its service gone)
        is said once, and training goes on: the metrics are a record, the run is the checkpoints."""
        if not self.accelerator.trackers:
            return
        try:
            self.accelerator.log(metrics, step=step)
        except Exception as e:  # noqa: BLE001 -- any tracker library's error: never the run's end
            if not self.failed:
                self.failed = True
                self.accelerator.print(f"warning: log.trackers: writing the metrics of step {step} failed "
                                       f"({one_line(e)}); training goes on (said once; later steps are still tried)")

    def finish(self) -> None:
        """Close every tracker (main process); for an offline wandb run print the one sync command."""
        acc = self.accelerator
        for t in acc.trackers:
            t.finish()
        acc.trackers.clear()
        if acc.is_main_process and self.wandb_mode:
            import wandb

            wandb.teardown()  # run files complete on return (wandb's service closes them asynchronously)
        if acc.is_main_process and self.wandb_mode == "offline" and self.run_id:
            acc.print(sync_command(self.wandb_dir, self.run_id))


def start(run, state: dict) -> Tracker:
    """Open ``run.cfg.log.trackers`` after ``restore``; puts the wandb run id into ``state`` so the next
    checkpoint keeps it. Call on every rank (the id is agreed with one broadcast)."""
    cfg, acc = run.cfg, run.accelerator
    if not cfg.log.trackers:
        return Tracker(acc)
    try:
        return _open(run, state)
    except OSError as e:  # the tracker's directory cannot be written: its records are lost, not the run
        acc.print(f"warning: log.trackers: could not open {', '.join(cfg.log.trackers)} under "
                  f"{cfg.train.out_dir} ({one_line(e)}); training goes on without them")
        acc.trackers.clear()
        return Tracker(acc)


def _open(run, state: dict) -> Tracker:
    """``start``'s work: the trackers opened (wandb with its agreed id, online or offline)."""
    cfg, acc = run.cfg, run.accelerator
    config = flat_config(cfg.to_dict())
    if "wandb" not in cfg.log.trackers:
        acc.init_trackers(cfg.log.project, config=config)
        return Tracker(acc)
    run_id = state.get(STATE_KEY) or _agreed_new_id(acc)
    state[STATE_KEY] = run_id
    wandb_dir = os.path.join(cfg.train.out_dir, "wandb")
    mode = resolve_mode(acc.print) if acc.is_main_process else None
    if acc.is_main_process:
        os.makedirs(wandb_dir, exist_ok=True)
    try:
        acc.init_trackers(cfg.log.project, config=config,
                          init_kwargs={"wandb": _wandb_kwargs(cfg.train.out_dir, run_id, mode)})
    except Exception as e:  # only the main process starts wandb, so only it gets here
        if mode != "online" or isinstance(e, OSError):
            raise
        acc.print(f"wandb: warning: wandb.init failed online ({one_line(e)}); logging offline under {wandb_dir}")
        mode = "offline"
        _restart_wandb_offline(acc, cfg.log.project, config, _wandb_kwargs(cfg.train.out_dir, run_id, mode))
    return Tracker(acc, mode, wandb_dir, run_id)


def _wandb_kwargs(out_dir: str, run_id: str, mode: str | None) -> dict:
    import wandb

    # explicit settings replace wandb's own reading of WANDB_INIT_TIMEOUT, so it is read here
    timeout = float(os.environ.get("WANDB_INIT_TIMEOUT") or INIT_TIMEOUT_S)
    # quiet: wandb's own footer would print a second sync command; ours is printed by Tracker.finish
    return {"dir": out_dir, "id": run_id, "resume": "allow", "mode": mode,
            "settings": wandb.Settings(quiet=True, init_timeout=timeout)}


def _restart_wandb_offline(acc, project: str, config: dict, kwargs: dict) -> None:
    import wandb
    from accelerate.tracking import WandBTracker

    wandb.teardown()  # the failed attempt keeps its run id "in use" inside wandb's service otherwise
    acc.trackers[:] = [t for t in acc.trackers if t.name != "wandb"]
    tracker = WandBTracker(project, **kwargs)
    tracker.start()
    tracker.store_init_configuration(config)
    acc.trackers.append(tracker)


def _agreed_new_id(acc) -> str:
    from accelerate.utils import broadcast_object_list

    new = [_new_id() if acc.is_main_process else None]
    if acc.num_processes > 1:
        broadcast_object_list(new, from_process=0)
    return new[0]


def _new_id() -> str:
    from wandb.sdk.lib.runid import generate_id

    return generate_id()


def resolve_mode(warn) -> str:
    """wandb's mode for this process: ``WANDB_MODE`` if set, else online when credentials exist and the
    API host answers, else offline (one line through ``warn`` when a key is set but the host is away)."""
    if os.environ.get("WANDB_MODE"):
        mode = {"dryrun": "offline", "run": "online"}.get(os.environ["WANDB_MODE"], os.environ["WANDB_MODE"])
        if mode != "online":
            return mode
    elif not has_credentials():
        warn("wandb: no credentials found, logging offline")
        return "offline"
    problem = unreachable(base_url())
    if problem:
        warn(f"wandb: warning: {problem}; logging offline instead")
        return "offline"
    return "online"


def base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


def has_credentials() -> bool:
    """A key in the environment or a netrc entry for the API host (never read into anything we keep)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(base_url()).hostname or ""
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def unreachable(url: str, timeout: float = REACH_TIMEOUT_S) -> str | None:
    """Why the server at ``url`` gives no HTTP answer within ``timeout`` seconds (DNS, connect, TLS
    and the first response together), or None when it answers with any status. No credentials are
    sent."""
    import urllib.error
    import urllib.request

    parsed = urlparse(url)
    if not parsed.hostname or parsed.scheme not in ("http", "https"):
        return f"WANDB_BASE_URL '{url}' is not an http(s) URL"
    where = f"the wandb API host {parsed.hostname}:{parsed.port or (443 if parsed.scheme == 'https' else 80)}"
    result: list = []

    def probe():
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            result.append(None)
        except urllib.error.HTTPError:  # any status is an answer
            result.append(None)
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            result.append(getattr(reason, "strerror", None) or str(reason).splitlines()[0][:120] or type(e).__name__)

    worker = threading.Thread(target=probe, daemon=True)  # getaddrinfo ignores the socket timeout
    worker.start()
    worker.join(timeout + 0.5)
    if not result:
        return f"{where} did not answer within {timeout:.0f} s"
    return None if result[0] is None else f"cannot reach {where} ({result[0]})"


def sync_command(wandb_dir: str, run_id: str) -> str:
    """The line that uploads every part of offline run ``run_id`` (one directory per start; wandb sync
    replays the parts of one run in order of their start time)."""
    parts = sorted(glob.glob(os.path.join(wandb_dir, f"offline-run-*-{run_id}")))
    return (f"wandb: offline run {run_id} ({len(parts)} part{'s' if len(parts) != 1 else ''}); upload it with: "
            f"wandb sync {shlex.quote(wandb_dir)}/offline-run-*-{run_id}")


def flat_config(tree: dict) -> dict:
    """``{'optim': {'lr': 0.02}}`` -> ``{'optim.lr': 0.02}``, without secrets (see the module doc)."""
    secrets = {v for k in SECRET_ENV if (v := os.environ.get(k))}
    out = {}
    for key, value in _flat(tree).items():
        last = key.rsplit(".", 1)[-1].lower()
        if any(last == s or last.endswith("_" + s) for s in _SECRET_NAMES) or (isinstance(value, str) and
                                                                                  value in secrets):
            continue
        out[key] = value
    return out


def group_lrs(optimizer) -> dict:
    """``train/lr/<group name>`` for every param group (μP gives each its own lr)."""
    return {f"train/lr/{g.get('name') or f'group{i}'}": g["lr"] for i, g in enumerate(optimizer.param_groups)}


def one_line(e: BaseException, limit: int = 200) -> str:
    """An exception as one short line, with any secret environment value masked."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]
    for k in SECRET_ENV:
        if os.environ.get(k):
            text = text.replace(os.environ[k], "***")
    return f"{type(e).__name__}: {text}"


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out
