"""busdet.dicom_node in this process, with a fake model and a pynetdicom storage SCP as the destination.

The tests against a real PACS (Orthanc, with the shipped model and tools/dicom_node.py)
are in test_dicom_pacs.py. Everything talks over the loopback interface only.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import (ComprehensiveSRStorage, CTImageStorage, SecondaryCaptureImageStorage,
                                  UltrasoundImageStorage, Verification)

from busdet.dicom_node import Destination, DicomNode, NodeSettings, NodeSetupError, retry_pause
from busdet.dicom_phantoms import FAKE_PHI, phantom_dicom
from busdet.phantoms import generate_phantom
from test_browser import free_port
from test_predict import fake_detector

JPEG2000 = "1.2.840.10008.1.2.4.91"
SECRETS = [value for value in FAKE_PHI.values() if len(value) > 3]


def wait_for(condition, what: str, timeout: float = 30.0):
    """Polls ``condition`` until it returns something true; fails naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def ultrasound(seed: int = 2, phi: bool = True) -> pydicom.Dataset:
    image = generate_phantom(seed, "malignant", width=320, height=240).image
    return phantom_dicom(image, region=(20, 10, 300, 230), cm_per_pixel=0.01, phi=phi)


class Sink:
    """A storage SCP that keeps what it receives: the destination in these tests."""

    def __init__(self, port: int):
        self.port, self.received, self.server = port, [], None

    def start(self) -> "Sink":
        ae = AE(ae_title="SINK")
        for sop_class in (ComprehensiveSRStorage, SecondaryCaptureImageStorage):
            ae.add_supported_context(sop_class, ExplicitVRLittleEndian)

        def keep(event):
            self.received.append(event.dataset)
            return 0x0000
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, keep)])
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def send(port: int, dataset: pydicom.Dataset, syntax: str = ExplicitVRLittleEndian, sop_class=None):
    """C-STORE from a test SCU -> ``(accepted, status or None)``."""
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(sop_class or dataset.SOPClassUID, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="BUSDET")
    if not assoc.is_established:  # pynetdicom aborts an association whose only context was refused
        return False, None
    try:
        return True, int(assoc.send_c_store(dataset).Status)
    finally:
        assoc.release()


@pytest.fixture
def sink():
    sink = Sink(free_port()).start()
    yield sink
    sink.stop()


def make_node(tmp_path: Path, destination_port: int) -> DicomNode:
    settings = NodeSettings("BUSDET", free_port(), Destination("SINK", "127.0.0.1", destination_port),
                            tmp_path / "queue", retry_seconds=0.2, max_retry_seconds=0.5)
    return DicomNode(fake_detector(), settings)


@pytest.fixture
def node(tmp_path, sink):
    node = make_node(tmp_path, sink.port)
    node.start()
    yield node
    node.stop()


def test_received_ultrasound_gets_its_report_and_capture_sent(node, sink, caplog):
    caplog.set_level(logging.INFO)
    source = ultrasound()
    assert send(node.settings.port, source) == (True, 0x0000)
    wait_for(lambda: len(sink.received) == 2, "the report and the capture")
    assert sorted(d.Modality for d in sink.received) == ["OT", "SR"]
    assert all(d.StudyInstanceUID == source.StudyInstanceUID for d in sink.received)
    wait_for(lambda: not list(node.settings.queue_dir.rglob("*.dcm")), "an empty queue")
    uids = [source.SOPInstanceUID, source.StudyInstanceUID, source.SeriesInstanceUID]
    assert not [s for s in SECRETS + uids for m in caplog.messages if s in m]
    assert any(m.startswith("image 1: suspicious for malignancy") for m in caplog.messages)


def test_answers_echo(node):
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.settings.port, ae_title="BUSDET")
    assert assoc.is_established and int(assoc.send_c_echo().Status) == 0x0000
    assoc.release()


def test_unread_transfer_syntax_and_other_modalities_are_refused_at_association(node, sink, caplog):
    assert send(node.settings.port, ultrasound(), syntax=JPEG2000) == (False, None)
    assert "refused Ultrasound Image Storage (transfer syntax not read)" in caplog.text
    computed_tomography = ultrasound()
    computed_tomography.SOPClassUID, computed_tomography.Modality = CTImageStorage, "CT"
    assert send(node.settings.port, computed_tomography) == (False, None)
    assert "refused CT Image Storage (not an ultrasound image class)" in caplog.text
    assert send(node.settings.port, ultrasound(3)) == (True, 0x0000)  # and the node goes on
    wait_for(lambda: len(sink.received) == 2, "the results of the next image")


def test_unusable_image_is_one_line_and_the_node_goes_on(node, sink, caplog):
    broken = ultrasound()
    broken.PhotometricInterpretation = "YBR_ICT"  # JPEG 2000's colour space, in an uncompressed file
    assert send(node.settings.port, broken) == (True, 0x0000)
    line = wait_for(lambda: [m for m in caplog.messages if m.startswith("image 1: not used:")], "the line")
    assert line == ["image 1: not used: DICOM photometric interpretation YBR_ICT is not read "
                    "(read: MONOCHROME1, MONOCHROME2, PALETTE COLOR, RGB, YBR_FULL, YBR_FULL_422)"]
    assert send(node.settings.port, ultrasound(3)) == (True, 0x0000)
    wait_for(lambda: len(sink.received) == 2, "the results of the next image")
    assert not list((node.settings.queue_dir / "incoming").iterdir())


def test_results_wait_on_disk_while_the_destination_is_down_and_go_when_it_is_back(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    down = free_port()
    node = make_node(tmp_path, down)
    node.start()
    try:
        assert send(node.settings.port, ultrasound()) == (True, 0x0000)
        wait_for(lambda: "not reachable (no association); 2 result(s) wait in" in caplog.text, "a retry line")
        queued = sorted(p.name for p in node.outbox.iterdir())
        assert len(queued) == 2
        sink = Sink(down).start()
        try:
            wait_for(lambda: len(sink.received) == 2, "the queued results, once the destination is up")
        finally:
            sink.stop()
        wait_for(lambda: not list(node.outbox.iterdir()), "an empty outbox")
        assert "SINK@127.0.0.1:%d reachable again" % down in caplog.messages
    finally:
        node.stop()


def test_a_stop_keeps_the_queue_and_the_next_start_sends_it(tmp_path):
    down = free_port()
    node = make_node(tmp_path, down)
    node.start()
    assert send(node.settings.port, ultrasound()) == (True, 0x0000)
    wait_for(lambda: len(list(node.outbox.iterdir())) == 2, "two queued results")
    node.stop()
    queued = sorted(node.outbox.iterdir())
    assert all(pydicom.dcmread(path).Modality in ("SR", "OT") for path in queued)  # whole files
    sink = Sink(down).start()
    again = make_node(tmp_path, down)
    again.start()
    try:
        wait_for(lambda: len(sink.received) == 2, "the results left by the earlier run")
    finally:
        again.stop()
        sink.stop()


def test_a_full_disk_keeps_the_image_for_the_next_try(node, sink, monkeypatch, caplog):
    queue, failures = node._queue, []

    def fail_once(datasets):
        if not failures:
            failures.append(1)
            raise OSError(28, "No space left on device")
        queue(datasets)
    monkeypatch.setattr(node, "_queue", fail_once)
    assert send(node.settings.port, ultrasound()) == (True, 0x0000)
    wait_for(lambda: len(sink.received) == 2, "the results, on the second try")
    assert "image 1: cannot queue its results (No space left on device); tried again in 0.2 s" in caplog.messages


def test_a_store_while_stopping_is_refused_so_the_sender_keeps_it(node):
    node._stopping.set()
    assert send(node.settings.port, ultrasound()) == (True, 0xA700)


@pytest.mark.parametrize("text", ["ORTHANC@127.0.0.1", "127.0.0.1:4242", "@host:1", "AE@host:0",
                                  "A_TITLE_FAR_TOO_LONG@host:104"])
def test_bad_destinations_are_named(text):
    with pytest.raises(NodeSetupError, match="expected AE@HOST:PORT"):
        Destination.parse(text)


def test_destination_and_backoff():
    assert Destination.parse("PACS@10.1.2.3:104") == Destination("PACS", "10.1.2.3", 104)
    settings = NodeSettings("BUSDET", 1, Destination("A", "h", 1), Path("q"), retry_seconds=2, max_retry_seconds=30)
    assert [retry_pause(n, settings) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]


def test_a_port_in_use_is_named(tmp_path, node):
    other = DicomNode(fake_detector(), NodeSettings("BUSDET", node.settings.port, Destination("A", "h", 1),
                                                    tmp_path / "other"))
    with pytest.raises(NodeSetupError, match=f"cannot listen on 127.0.0.1:{node.settings.port}"):
        other.start()


def test_the_tool_defaults_to_the_checkouts_model_from_any_working_folder():
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("dicom_node_tool", root / "tools" / "dicom_node.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    args = tool.get_args_parser().parse_args(["--send-to", "PACS@127.0.0.1:104"])
    assert (args.model, args.label_map) == (root / "saved_model", root / "label_map.pbtxt")
    assert args.queue == Path("dicom_node_queue")  # its own files stay in the working folder
