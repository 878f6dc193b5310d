"""The model worker: one process holds the model pair and serves the ADL tools.

`service.AdlService` is the worker itself (usable in-process); `http` serves it over FastAPI and
provides `HttpWorkerClient`, which has the same methods. Request and response models live in
`schema`.
"""
