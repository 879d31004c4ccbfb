"""A real Orthanc (Debian's package) with its DICOMweb plugin, as the PACS of the tests.

Each server has its own generated configuration: free local ports, storage and index in its
own folder, the DICOMweb root at /dicom-web/, HTTP basic auth with one registered user and
a random password, local connections only, the DICOM (DIMSE) server off and no modalities
or peers. It starts in about 0.1 s and stops in about 2 s (Orthanc finishes its HTTP
server's keep-alive connections first).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.server_process import free_port

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
INSTALL = "scripts/ensure-test-deps.sh installs Debian's orthanc and orthanc-dicomweb"


def orthanc_binary() -> str | None:
    found = shutil.which("Orthanc")
    if found:
        return found
    return ORTHANC if os.access(ORTHANC, os.X_OK) else None


def missing() -> str | None:
    """Why Orthanc cannot run here, or None when it can."""
    if orthanc_binary() is None:
        return f"Orthanc is not installed ({INSTALL})"
    if not Path(DICOMWEB_PLUGIN).is_file():
        return f"Orthanc's DICOMweb plugin is not installed ({INSTALL})"
    return None


class OrthancServer:
    """One Orthanc under `root` (config, storage, index, log). `start()` waits until it
    answers; `stop()` then `start()` again keeps its ports and data."""

    def __init__(self, root: Path, username: str = "chexray") -> None:
        binary = orthanc_binary()
        if binary is None or missing():
            raise RuntimeError(missing())
        self.binary, self.root = binary, root
        self.username, self.password = username, secrets.token_urlsafe(18)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb_url = f"{self.url}/dicom-web"
        self.log = root / "orthanc.log"
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None  # how long the last start took
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "orthanc.json"
        self.config.write_text(json.dumps(self._configuration(), indent=2))

    def _configuration(self) -> dict[str, Any]:
        return {
            "Name": "chexray-test-pacs",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "DicomServerEnabled": False,
            "DicomPort": self.dicom_port,
            "DicomModalities": {},
            "OrthancPeers": {},
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "SaveJobs": False,
            "ConcurrentJobs": 1,
        }

    @property
    def auth(self) -> tuple[str, str]:
        return self.username, self.password

    def start(self, timeout_s: float = 30.0) -> None:
        started = time.monotonic()
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [self.binary, str(self.config)],
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = started + timeout_s
        while True:
            try:
                if httpx.get(self.url + "/system", auth=self.auth, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.proc.returncode}): {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Orthanc did not answer in {timeout_s} s: {self.log_tail()}")
            time.sleep(0.05)
        self.startup_s = time.monotonic() - started

    def stop(self, timeout_s: float = 15.0) -> None:
        """Terminate (Orthanc then stops cleanly), kill if it lingers."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""

    # Orthanc's own REST API: what the PACS really holds, seen past DICOMweb.

    def _rest(self, method: str, path: str, **kw: Any) -> httpx.Response:
        resp = httpx.request(method, self.url + path, auth=self.auth, timeout=30, **kw)
        resp.raise_for_status()
        return resp

    def upload(self, instance: bytes) -> dict[str, Any]:
        """Store one Part 10 file through Orthanc's REST API; its answer (ID, ParentStudy,
        Status...)."""
        return self._rest(
            "POST", "/instances", content=instance, headers={"Content-Type": "application/dicom"}
        ).json()

    def instances_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        """The instances Orthanc holds of a study, with their MainDicomTags (SOPInstanceUID)."""
        query = {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True}
        return self._rest("POST", "/tools/find", json=query).json()

    def sop_instance_uids(self, study_uid: str) -> set[str]:
        return {i["MainDicomTags"]["SOPInstanceUID"] for i in self.instances_of_study(study_uid)}

    def get_instance_file(self, orthanc_id: str) -> bytes:
        """The Part 10 file as Orthanc stored it."""
        return self._rest("GET", f"/instances/{orthanc_id}/file").content

    def version(self) -> str:
        return self._rest("GET", "/system").json()["Version"]
