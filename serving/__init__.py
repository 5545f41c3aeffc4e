"""An OpenAI-compatible inference server over the project's jitted sampler.

    app.py      FastAPI routes (/v1/completions, /v1/chat/completions, /v1/models, /health, /ready, /metrics)
    batcher.py  the bounded queue and the worker thread that batches requests dynamically
    engine.py   jobs -> fixed-shape `Sampler.stream_ids` calls; start-up compilation of every bucket
    choices.py, text.py  token ids -> text deltas (incremental decoding, stop strings, finish reasons)
    responses.py  OpenAI response bodies and SSE chunks; errors.py  OpenAI error bodies, readable messages
    schemas.py  OpenAI request / response models; config.py  the server's limits
    metrics.py  Prometheus series; middleware.py  request metrics (fixed label sets), body size cap and
                deadline, the optional API key; openapi.py  the status codes /openapi.json documents
    server.py   uvicorn with a deadline for request heads (and for idle keep-alive connections)
    drift       with --drift_reference, prompts and responses feed a `rlvr_jax.monitoring.drift.DriftMonitor`
                (gauges in /metrics); POST /v1/feedback attaches verified outcomes (pass-rate drift)

Start it with `python scripts/serve.py --model SRC`; `serving.app.create_app` builds the app for embedding
and tests. Nothing is imported here, so that `serving.config` stays cheap for argument checking.
"""
