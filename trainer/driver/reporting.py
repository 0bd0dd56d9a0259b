"""Reporting a run back to the control plane: events, per-step metrics and checkpoints.

Reports leave from a background thread in order. Each gets the next sequence number once, the
first time it is sent, and keeps it through every retry, so the service stores it once however
often the send is repeated. While the service is down the reports wait in memory and the thread
keeps retrying; nothing is dropped. A restarted trainer asks for the last stored number first,
and for the last step stored: a run resumed from an earlier checkpoint replays the steps after
it (the same samples: every random stream is seeded by step), and their step and checkpoint
reports, already stored, are not sent again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import httpx

from trainer.spec.reports import REPLAYED, TrainerReport

log = logging.getLogger("flywheel.reporting")


class NullReporter:
    """For runs outside the service."""

    def send(self, report: TrainerReport) -> None:
        pass

    def close(self, timeout_s: float = 0) -> None:
        pass


class HttpReporter:
    def __init__(self, url: str, job_id: str, token: str, retry_s: float = 1.0):
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        self.path = f"/v1/jobs/{job_id}/report"
        self.retry_s = retry_s
        self.pending: queue.Queue = queue.Queue()
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="flywheel-reporter")
        self._thread.start()

    def send(self, report: TrainerReport) -> None:
        self.pending.put(report.model_dump(mode="json"))

    def _retrying(self, call):
        while True:
            try:
                response = call()
                if response.status_code < 400:
                    return response.json()
                if response.status_code < 500:
                    # Refused for good (a retry cannot help): say so and go on with the next report.
                    log.error("the control plane refused a report (%s): %s", response.status_code,
                              response.text[:300])
                    return None
            except httpx.TransportError:
                pass
            if self._stop.is_set() and self.pending.empty():
                return None
            time.sleep(self.retry_s)

    def _run(self) -> None:
        last = self._retrying(lambda: self.client.get(self.path))
        seq = last["last_seq"] if last else 0
        reported_through = last.get("last_step", 0) if last else 0
        while not (self._stop.is_set() and self.pending.empty()):
            try:
                item = self.pending.get(timeout=0.2)
            except queue.Empty:
                continue
            if item["kind"] in REPLAYED and (item["data"] or {}).get("step", 0) <= reported_through:
                self.pending.task_done()
                continue
            seq += 1
            body = {"seq": seq, **item}
            self._retrying(lambda body=body: self.client.post(self.path, json=body))
            self.sent += 1
            self.pending.task_done()

    def close(self, timeout_s: float = 120) -> None:
        """Wait (up to `timeout_s`) until every report is stored."""
        deadline = time.monotonic() + timeout_s
        while self.pending.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.1)
        self._stop.set()
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()) + 1)
        self.client.close()
