"""`pseudocot serve`: the Pseudo-CoT pipeline behind an OpenAI-compatible HTTP API, with a chat page.

`protocol` reads requests and writes responses (thoughts as `reasoning_content`), `batcher` answers
concurrent requests together in one pipeline batch, `app` holds the routes, auth and limits, `server`
runs it on uvicorn and drains on SIGTERM.

    pseudocot serve --run runs/demo
"""
