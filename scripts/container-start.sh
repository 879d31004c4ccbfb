#!/bin/sh
# Container entry: fill an empty /models volume with the bundled default repository
# (built in the image's first stage), then start the server on it.
set -eu
if [ ! -f "$CHEXRAY_MODEL_DIR/manifest.json" ]; then
  echo "Empty model volume: installing the bundled default model repository"
  cp -R /opt/models-default/. "$CHEXRAY_MODEL_DIR/"
fi
exec chexray serve --no-build
