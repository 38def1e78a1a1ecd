"""Vertex AI custom training: where a job's outputs go, as Vertex says in its environment. No TensorFlow here.

With a job's baseOutputDirectory gs://B/P, Vertex sets AIP_CHECKPOINT_DIR (gs://B/P/checkpoints/),
AIP_MODEL_DIR (gs://B/P/model/) and AIP_TENSORBOARD_LOG_DIR (gs://B/P/logs/), and mounts Cloud Storage with
Cloud Storage FUSE under /gcs. distmnist then keeps its run directory (checkpoints, history, run.json,
pictures) in AIP_CHECKPOINT_DIR through that mount, as run directory `run`, so a restarted job finds it and
resumes; writes the SavedModel also to AIP_MODEL_DIR; and its TensorBoard events to AIP_TENSORBOARD_LOG_DIR,
where Vertex's TensorBoard reads them while the job runs. The last two are written with TensorFlow's own gs://
support. Flags given explicitly win over the environment.
"""

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from distmnist.common.config import TrainConfig
from distmnist.common.errors import UserError

GCS_FUSE_ROOT = "/gcs"
RUN_NAME = "run"


def local_path(uri: str, fuse_root: str = GCS_FUSE_ROOT) -> str:
    """gs://B/P as the path Cloud Storage FUSE mounts it at (/gcs/B/P); any other path as it is."""
    if not uri.startswith("gs://"):
        return uri.rstrip("/") or uri
    if not os.path.isdir(fuse_root):
        raise UserError(
            f"{uri} is in Cloud Storage, but this machine has no Cloud Storage FUSE mount at "
            f"{fuse_root} (Vertex AI custom training has one); pass --logdir=A_LOCAL_FOLDER"
        )
    return os.path.join(fuse_root, uri[len("gs://") :].rstrip("/"))


def from_environment(config: TrainConfig, environ: Mapping[str, str], fuse_root: str = GCS_FUSE_ROOT) -> TrainConfig:
    """The config with --logdir/--run_name, --events_dir and --export_dir taken from Vertex AI's AIP_*
    variables where they are set and the flags were left at their defaults."""
    defaults = TrainConfig()
    changes: dict[str, Any] = {}
    if environ.get("AIP_CHECKPOINT_DIR") and config.logdir == defaults.logdir:
        changes["logdir"] = local_path(environ["AIP_CHECKPOINT_DIR"], fuse_root)
        changes["run_name"] = config.run_name or RUN_NAME
    if environ.get("AIP_TENSORBOARD_LOG_DIR") and config.events_dir is None:
        changes["events_dir"] = environ["AIP_TENSORBOARD_LOG_DIR"].rstrip("/")
    if environ.get("AIP_MODEL_DIR") and config.export_dir is None:
        changes["export_dir"] = environ["AIP_MODEL_DIR"].rstrip("/")
    return dataclasses.replace(config, **changes) if changes else config
