"""The PACS round trip per study: a chest CR stored in a real Orthanc (its DICOMweb plugin)
is pulled by CheXray, analysed and its results (report and five heatmaps) sent back, until
Orthanc has acknowledged them; and the same for a study Orthanc sends to CheXray by STOW-RS.
One `chexray serve` and one Orthanc this script starts (Debian's orthanc and
orthanc-dicomweb), studies one after another.

    python bench/pacs.py                          # the repository at models_onnx, 10 studies
    python bench/pacs.py --repo /tmp/tiny --studies 3 --out /tmp/pacs

Writes bench/results/pacs-<machine>-<date>.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.engine import cpu_model  # noqa: E402
from tests.support.api import register  # noqa: E402
from tests.support.dicom_studies import chest_instance  # noqa: E402
from tests.support.orthanc import OrthancServer  # noqa: E402
from tests.support.server_process import running_server  # noqa: E402


def wait_sent(http: httpx.Client, study_id: str, auth: dict) -> str:
    while True:
        state = http.get(f"/api/v1/studies/{study_id}/pacs", headers=auth).json()
        if state["status"] != "pending":
            return state["status"]
        time.sleep(0.02)


def newest_study(http: httpx.Client, auth: dict, known: set[str]) -> str:
    while True:
        for item in http.get("/api/v1/studies", headers=auth).json()["items"]:
            if item["id"] not in known:
                known.add(item["id"])
                return item["id"]
        time.sleep(0.02)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", type=Path, default=ROOT / "models_onnx")
    p.add_argument("--studies", type=int, default=10)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="chexray-pacs-bench-"))
    orthanc = OrthancServer(work / "orthanc")
    orthanc.start()
    orthanc_version = orthanc.version()
    rows: dict[str, list[float]] = {"pull": [], "orthanc_push": []}
    try:
        user, password = orthanc.auth
        env = {
            "CHEXRAY_PACS_URL": orthanc.dicomweb_url,
            "CHEXRAY_PACS_USERNAME": user,
            "CHEXRAY_PACS_PASSWORD": password,
            "CHEXRAY_LOG_LEVEL": "warning",
        }
        with (
            running_server(args.repo, work / "chexray", **env) as (url, _),
            httpx.Client(base_url=url, timeout=120) as http,
        ):
            auth = register(http, "pacs")
            key = http.post("/api/v1/me/keys", json={"name": "pacs"}, headers=auth).json()["key"]
            server = {"Url": f"{url}/dicomweb/", "HttpHeaders": {"Authorization": f"Bearer {key}"}}
            httpx.put(f"{orthanc.url}/dicom-web/servers/chexray", auth=orthanc.auth, json=server)
            known: set[str] = set()
            model = http.get("/api/v1/models").json()
            for n in range(args.studies):
                for how in rows:
                    source = chest_instance(seed=n, pixels=None)
                    stored = orthanc.upload(source)
                    study_uid = httpx.get(
                        f"{orthanc.url}/studies/{stored['ParentStudy']}", auth=orthanc.auth
                    ).json()["MainDicomTags"]["StudyInstanceUID"]
                    t = time.perf_counter()
                    if how == "pull":
                        r = http.post(
                            "/api/v1/pacs/pulls", json={"study_uid": study_uid}, headers=auth
                        )
                        assert r.status_code == 200 and r.json()["analysed"] == 1, r.text
                    else:
                        r = httpx.post(
                            f"{orthanc.url}/dicom-web/servers/chexray/stow",
                            auth=orthanc.auth,
                            json={"Resources": [stored["ParentStudy"]]},
                            timeout=120,
                        )
                        assert r.status_code == 200, r.text
                    status = wait_sent(http, newest_study(http, auth, known), auth)
                    assert status == "sent", status
                    rows[how].append(time.perf_counter() - t)
    finally:
        orthanc.stop()
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        how: {
            "studies": len(v),
            "median_s": statistics.median(v),
            "max_s": max(v),
        }
        for how, v in rows.items()
    }
    report = {
        "date": dt.date.today().isoformat(),
        "machine": cpu_model(),
        "model": model.get("version"),
        "backend": f"{model.get('backend')} {model.get('precision', '')}".strip(),
        "orthanc": orthanc_version,
        "results": summary,
        "seconds": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^a-z0-9]+", "-", f"{report['machine']}-{os.cpu_count()}core".lower())
    stem = args.out / f"pacs-{name.strip('-')}-{report['date']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# PACS round trip, {report['date']}",
        "",
        f"{report['machine']}, {os.cpu_count()} cores; Orthanc {orthanc_version}; model "
        f"{report['model']} on {report['backend']}; a 256x224 "
        "12-bit CR per study; report and five heatmap objects sent back; until Orthanc "
        "acknowledged them.",
        "",
        "| path | studies | median s | max s |",
        "|---|---|---|---|",
        *(
            f"| {how} | {s['studies']} | {s['median_s']:.2f} | {s['max_s']:.2f} |"
            for how, s in summary.items()
        ),
        "",
        "pull: POST /api/v1/pacs/pulls (WADO-RS from Orthanc, analysis, STOW-RS back); "
        "orthanc_push: Orthanc's POST /dicom-web/servers/chexray/stow, then the results back.",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
