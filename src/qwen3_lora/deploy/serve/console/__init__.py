"""The web console at `/`: a page (plain HTML + one script, every file shipped in the package)
over the serve app's API and its own `/api/...` routes.

workspace (paths confined to `--workspace`) -> reports (eval reports, training runs) -> fields
(job forms -> argv) -> jobs (background train/eval processes; `jobrunner` records their exit)
-> routes (`install_console`).
"""

from __future__ import annotations

from ..settings import ServeConfig
from .jobs import Jobs
from .routes import PAGE_PATHS, STATIC_PREFIX, Console, install_console
from .workspace import Workspace

__all__ = [
    "PAGE_PATHS",
    "STATIC_PREFIX",
    "Console",
    "Jobs",
    "Workspace",
    "console_from_config",
    "install_console",
]


def console_from_config(config: ServeConfig, load_adapter=None) -> Console:
    """The console `serve` gets from its flags: training jobs only with --enable-training."""
    workspace = Workspace.open(config.workspace) if config.workspace else None
    jobs = None
    if config.enable_training and workspace is not None:
        jobs = Jobs(workspace, max_running=config.max_jobs)
    return Console(workspace, jobs, load_adapter if jobs else None)
