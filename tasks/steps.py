"""The worker bootstep that runs the node service beside a node worker's consumer."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from celery import bootsteps

from tasks.config import get_settings
from tasks.errors import InvalidInput
from tasks.wiring import get_node

log = logging.getLogger("walbackup.node")


class NodeStep(bootsteps.StartStopStep):
    """Starts the node service (heartbeats, WORKDIR watcher, lease upkeep,
    metrics) in a worker started with ``WALBACKUP_NODE_ID``; a worker without
    one only runs the shared queue's tasks."""

    requires: ClassVar[set[str]] = {"celery.worker.components:Pool"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        settings = get_settings()
        self.enabled = settings.node_id is not None
        if not self.enabled and settings.workdir is not None:
            log.warning(
                "WALBACKUP_WORKDIR is set but WALBACKUP_NODE_ID is not: this worker runs "
                "only the shared queue and backs nothing up from %s",
                settings.workdir,
            )

    def start(self, parent: Any) -> None:
        try:
            get_node().start()
        except InvalidInput as exc:
            # A setup mistake (WORKDIR missing, the metrics port taken, …):
            # one line, not Celery's "Unrecoverable error" traceback.
            log.critical("Node %s cannot start: %s", get_settings().node_id, exc)
            raise SystemExit(2) from None

    def stop(self, parent: Any) -> None:
        get_node().stop()
