"""The CheXray server: engine, heatmaps, HTTP API, store and web app. No tensorflow, no torch."""
