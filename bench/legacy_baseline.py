"""What the legacy application ran, for comparison: five Keras models each `predict`ed per
request, then the CAM DenseNet in PyTorch, in one process, one request at a time, no batching.

    python bench/legacy_baseline.py --port 8100

It answers POST /api/v1/predictions (PNG/JPEG body) with the five ensemble probabilities
and the CAM maps, and GET /health/ready. Same architectures and input size as the default
preset, random weights (speed does not depend on the values). TensorFlow and PyTorch are
needed (the `convert` extra); the server itself never uses them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np


def load():
    import keras
    import torch

    from convert.densenet import DenseNet
    from convert.keras_job import build_architecture
    from convert.presets import LEGACY_WEIGHTS, get_preset
    from server.runtime.manifest import normalise_weights

    preset = get_preset("default")
    members = [(spec, build_architecture(keras, spec)) for spec in preset.members]
    cam = DenseNet().eval()
    weights = np.asarray(normalise_weights([LEGACY_WEIGHTS[s.name] for s, _ in members]))
    indices = [
        preset.cam.class_map[f]
        for f in ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
    ]
    return members, cam, weights, indices, torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    args = p.parse_args()
    members, cam, weights, indices, torch = load()
    lock = threading.Lock()  # its models served one request at a time

    def predict(body: bytes) -> dict:
        img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)  # BGR, as cv2.imread
        x = cv2.resize(img, (224, 224)).astype(np.float32)[None]
        with lock:
            probs = []
            for spec, model in members:
                xi = x / 127.5 - 1.0 if spec.preprocess.mode == "tf" else x / 255.0
                out = model.predict(xi, verbose=0)[0]
                order = spec.output_order
                probs.append(
                    [
                        out[order.index(f)]
                        for f in (
                            "Atelectasis",
                            "Cardiomegaly",
                            "Consolidation",
                            "Edema",
                            "Pleural Effusion",
                        )
                    ]
                )
            ensemble = (np.asarray(probs) * weights).sum(0)
            rgb = (x[0][..., ::-1] / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
            t = torch.from_numpy(rgb.transpose(2, 0, 1)[None].astype(np.float32))
            with torch.no_grad():
                fmap = cam.feature_map(t)
                logits = cam.classifier(fmap.mean((2, 3)))
                w = cam.classifier.weight[indices]
                maps = torch.einsum("kc,nchw->nkhw", w, fmap)
        return {
            "findings": [{"probability": float(v)} for v in ensemble],
            "cam_probabilities": torch.sigmoid(logits[0, indices]).tolist(),
            "cam_maps": maps[0].tolist(),
        }

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send(200, {"status": "ready"})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                self._send(200, predict(body))
            except Exception as exc:
                self._send(400, {"error": str(exc)})

        def log_message(self, *args) -> None:
            pass

    predict(cv2.imencode(".png", np.zeros((64, 64), np.uint8))[1].tobytes())  # warm-up
    print(f"legacy baseline ready on {args.host}:{args.port}", flush=True)
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
