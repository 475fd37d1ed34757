"""A DICOM node: ultrasound images in by C-STORE, a report and an annotated image out to a PACS.

    node = DicomNode(detector, NodeSettings("BUSDET", 11112, Destination.parse("ORTHANC@pacs:4242"), Path("queue")))
    node.start()      # listens; a worker runs the model, a sender forwards the results
    node.stop()       # no new images; the image in hand is finished, the queues stay on disk

The node answers C-ECHO and accepts the ultrasound storage classes (single and
multi-frame) in the transfer syntaxes ``predict.py`` reads
(:data:`busdet.dicom.READ_TRANSFER_SYNTAXES`); any other class or syntax is refused
at association time (its presentation context is rejected, as DICOM says), and
the node logs one line naming what it refused.

Everything waits on disk in three folders under the queue folder, so that a stop,
a crash or a destination that is down loses nothing:

- ``incoming/``  images received and not yet analysed (the node's own copies:
  what it receives is never touched again once written);
- ``outbox/``    reports and annotated captures waiting to be sent (each named by
  its SOP Instance UID); sent ones are removed, and a destination that is down
  is tried again with a growing pause (capped);
- ``rejected/``  results the destination refused outright (not tried again).

Every file is written atomically (:func:`busdet.files.atomic_write`). These folders
hold patient images and identifiers: they are created readable by their owner only,
and an image is deleted as soon as its results are queued. Log lines name images
by a running number and say what happened, never what the header says.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pydicom
from pynetdicom import AE, evt
from pynetdicom.sop_class import (ComprehensiveSRStorage, SecondaryCaptureImageStorage,  # type: ignore
                                  UltrasoundImageStorage, UltrasoundMultiFrameImageStorage, Verification)

from busdet.dicom import READ_TRANSFER_SYNTAXES
from busdet.dicom_out import DicomOutError, build_dicom_results, dicom_bytes, read_source
from busdet.files import atomic_write
from busdet.inference import Detector
from busdet.results import FrameChoice, analyse_image, result_finding_line
from busdet.scans import read_scan

log = logging.getLogger(__name__)

# Ultrasound storage, current and retired (older machines still send these).
ULTRASOUND_CLASSES = [UltrasoundImageStorage, UltrasoundMultiFrameImageStorage,
                      "1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3"]
RESULT_CLASSES = [ComprehensiveSRStorage, SecondaryCaptureImageStorage]
RESULT_SYNTAXES = [pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian]
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
# Presentation context results (PS3.8 9.3.3.2): why a context was refused.
REFUSALS = {1: "refused by the node", 2: "no reason given", 3: "not an ultrasound image class",
            4: "transfer syntax not read"}


class NodeSetupError(ValueError):
    """The node cannot start as asked (a bad --send-to, a queue folder that cannot be used)."""


@dataclass(frozen=True)
class Destination:
    """Where the results go: an AE title at a host and port."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Destination":
        """``"AE@HOST:PORT"`` -> Destination.

        Raises:
          NodeSetupError: not in that form, or the port is not a number from 1 to 65535.
        """
        ae_title, at, address = text.partition("@")
        host, colon, port = address.rpartition(":")
        if not (at and colon and ae_title and host and port.isdigit() and 0 < int(port) < 65536
                and len(ae_title) <= 16):
            raise NodeSetupError(f"{text!r}: expected AE@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242 "
                                 "(AE title of at most 16 characters)")
        return cls(ae_title, host, int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class NodeSettings:
    """How the node listens, where it sends, where it queues, how it retries.

    ``retry_seconds``: the pause after the first failed send, doubled after each
    further failure up to ``max_retry_seconds``.
    """

    ae_title: str
    port: int
    destination: Destination
    queue_dir: Path
    host: str = "127.0.0.1"
    score_threshold: Optional[float] = None
    frames: FrameChoice = "all"
    retry_seconds: float = 2.0
    max_retry_seconds: float = 60.0


def retry_pause(failures: int, settings: NodeSettings) -> float:
    """Seconds to wait after ``failures`` failed sends in a row (exponential, capped)."""
    return min(settings.max_retry_seconds, settings.retry_seconds * 2 ** max(0, failures - 1))


class DicomNode:
    """The storage SCP, the worker that analyses what arrives and the sender that forwards results."""

    def __init__(self, detector: Detector, settings: NodeSettings):
        self.detector, self.settings = detector, settings
        self.score_threshold = detector.score_threshold if settings.score_threshold is None \
            else settings.score_threshold
        self.incoming, self.outbox, self.rejected = (settings.queue_dir / name
                                                     for name in ("incoming", "outbox", "rejected"))
        self._stopping = threading.Event()
        self._work, self._results = threading.Event(), threading.Event()
        self._received = 0
        self._lock = threading.Lock()
        self._server = None
        self._threads: List[threading.Thread] = []

    # --- life cycle -------------------------------------------------------------

    def start(self) -> None:
        """Creates the queue folders, starts listening, the worker and the sender.

        Raises:
          NodeSetupError: a queue folder cannot be created, or the port cannot be opened.
        """
        try:
            for folder in (self.settings.queue_dir, self.incoming, self.outbox, self.rejected):
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as error:
            raise NodeSetupError(f"{self.settings.queue_dir}: cannot use it as the queue folder "
                                 f"({error.strerror or error})") from None
        waiting = len(self._files(self.incoming)), len(self._files(self.outbox))
        if any(waiting):
            log.info("%d image(s) to analyse and %d result(s) to send, left by an earlier run", *waiting)
        self._server = self._listen()
        for target, name in ((self._work_loop, "busdet-node-worker"), (self._send_loop, "busdet-node-sender")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stops listening, lets the worker finish the image in hand and the sender its send, and returns."""
        self._stopping.set()
        self._work.set()
        self._results.set()
        if self._server is not None:
            self._server.shutdown()
        for thread in self._threads:
            thread.join()

    def _listen(self):
        ae = AE(ae_title=self.settings.ae_title)
        for sop_class in ULTRASOUND_CLASSES:
            ae.add_supported_context(sop_class, sorted(READ_TRANSFER_SYNTAXES))
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: SUCCESS),
                    (evt.EVT_ACCEPTED, self._on_accepted)]
        try:
            return ae.start_server((self.settings.host, self.settings.port), block=False, evt_handlers=handlers)
        except OSError as error:
            raise NodeSetupError(f"cannot listen on {self.settings.host}:{self.settings.port} "
                                 f"({error.strerror or error})") from None

    # --- receiving --------------------------------------------------------------

    def _on_accepted(self, event) -> None:
        """One line when an association proposed ultrasound in a transfer syntax not read, or nothing
        the node accepts. (A PACS proposes every storage class at once: those refusals are normal.)"""
        refused, accepted = event.assoc.rejected_contexts, event.assoc.accepted_contexts
        taken = {cx.abstract_syntax for cx in accepted}
        worth_saying = [cx for cx in refused if cx.abstract_syntax in ULTRASOUND_CLASSES
                        and cx.abstract_syntax not in taken] or (refused if not accepted else [])
        if worth_saying:
            names = sorted({f"{pydicom.uid.UID(cx.abstract_syntax).name} ({REFUSALS.get(cx.result, cx.result)})"
                            for cx in worth_saying})
            log.warning("association from %s: refused %s", event.assoc.requestor.ae_title, "; ".join(names))

    def _on_store(self, event) -> int:
        """Writes what arrived into ``incoming/`` (atomically) and answers at once; the worker analyses it."""
        if self._stopping.is_set():
            return OUT_OF_RESOURCES  # stopping: the sender keeps the image and tries again later
        with self._lock:
            self._received += 1
            number = self._received
        path = self.incoming / f"{time.time_ns():020d}-{number:06d}.dcm"
        try:
            with atomic_write(path, "wb") as stream:
                stream.write(event.encoded_dataset(include_meta=True))
        except OSError as error:
            log.error("image %d from %s: cannot queue it (%s)", number, event.assoc.requestor.ae_title,
                      error.strerror or type(error).__name__)
            return OUT_OF_RESOURCES
        log.info("image %d received from %s", number, event.assoc.requestor.ae_title)
        self._work.set()
        return SUCCESS

    # --- analysing --------------------------------------------------------------

    @staticmethod
    def _files(folder: Path) -> List[Path]:
        """The complete files of a queue folder, oldest first (names start with the time they came)."""
        return sorted(p for p in folder.glob("*.dcm") if p.is_file())

    def _wait_for_files(self, folder: Path, wake: threading.Event) -> List[Path]:
        """The files of a queue folder; when there are none, waits (a second at most) for ``wake`` first."""
        waiting = self._files(folder)
        if not waiting:
            wake.wait(timeout=1.0)
            wake.clear()
        return waiting

    def _work_loop(self) -> None:
        while not self._stopping.is_set():
            waiting = self._wait_for_files(self.incoming, self._work)
            if not waiting:
                continue
            try:
                self.analyse(waiting[0])
            except OSError as error:  # a full disk: the image stays in incoming/ for the next try
                log.error("%s: cannot queue its results (%s); tried again in %g s", self._label(waiting[0]),
                          error.strerror or type(error).__name__, self.settings.retry_seconds)
                self._stopping.wait(self.settings.retry_seconds)

    @staticmethod
    def _label(path: Path) -> str:
        """How log lines name a received image: by its running number, never by its header."""
        return f"image {int(path.stem.rsplit('-', 1)[-1])}" if "-" in path.stem else path.stem

    def analyse(self, path: Path) -> None:
        """Runs the model on one received image, queues its report and capture, then deletes the image.

        An image that cannot be used gets one line (its number and the reason) and is deleted too.
        """
        label = self._label(path)
        result, scan = analyse_image(self.detector, label, lambda: read_scan(path), self.score_threshold,
                                     self.settings.frames)
        if scan is None:
            log.warning("%s: not used: %s", label, result.error)
        else:
            try:
                self._queue(build_dicom_results(result, scan, read_source(path), self.detector.info))
            except DicomOutError as error:
                log.warning("%s: not used: %s", label, error)
            else:
                log.info("%s: %s; report and annotated image queued for %s", label, result_finding_line(result),
                         self.settings.destination)
        path.unlink()

    def _queue(self, datasets) -> None:
        """Writes results into the outbox (each whole or not at all) and wakes the sender."""
        for dataset in datasets:
            with atomic_write(self.outbox / f"{time.time_ns():020d}-{dataset.SOPInstanceUID}.dcm") as stream:
                stream.write(dicom_bytes(dataset))
        self._results.set()

    # --- sending ----------------------------------------------------------------

    def _send_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            waiting = self._wait_for_files(self.outbox, self._results)
            if not waiting:
                continue
            try:
                reason = self.send(waiting)
            except Exception as error:  # noqa: BLE001 - the sender must outlive any one failed send
                reason = f"sending failed ({type(error).__name__})"
            if reason is None:
                if failures:
                    log.info("%s reachable again", self.settings.destination)
                failures = 0
                continue
            failures += 1
            pause = retry_pause(failures, self.settings)
            log.warning("%s: %s; %d result(s) wait in %s, next try in %.3g s", self.settings.destination, reason,
                        len(self._files(self.outbox)), self.outbox, pause)
            self._stopping.wait(pause)

    def send(self, paths: List[Path]) -> Optional[str]:
        """Sends queued results over one association; each one sent (or refused for good) leaves the outbox.

        Returns:
          None when the destination answered for each file, else why it could not be reached
          (the files not sent stay queued).
        """
        destination = self.settings.destination
        ae = AE(ae_title=self.settings.ae_title)
        for sop_class in RESULT_CLASSES:
            ae.add_requested_context(sop_class, RESULT_SYNTAXES)
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
        if not assoc.is_established:
            return "not reachable (no association)"
        try:
            for path in paths:
                if self._stopping.is_set():
                    return None
                status = assoc.send_c_store(pydicom.dcmread(path))
                if not assoc.is_established or "Status" not in status:
                    return "the association broke off"
                busy = self._settle(path, int(status.Status))
                if busy:
                    return busy
        finally:
            if assoc.is_established:
                assoc.release()
        return None

    def _settle(self, path: Path, status: int) -> Optional[str]:
        """Removes a sent file; moves one refused for good to ``rejected/``; keeps one to retry later
        (and then says why)."""
        if status == SUCCESS or status & 0xF000 == 0xB000:  # success, or stored with a warning
            path.unlink()
        elif status & 0xFF00 == OUT_OF_RESOURCES:
            return f"out of resources (status 0x{status:04X})"
        else:
            os.replace(path, self.rejected / path.name)
            log.error("%s refused a result (status 0x%04X); kept in %s", self.settings.destination, status,
                      self.rejected)
        return None
