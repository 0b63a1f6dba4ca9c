"""Serving: the fine-tuned model behind HTTP, and the page people chat on.

- serve.py: `python -m serving.serve`, the local endpoint (Azure ML's /score, OpenAI's /v1 routes) on Starlette;
- scoring.py: the model and generation, and the Azure ML scoring entry (`init`/`run`, loaded by azmlinfsrv);
- contract.py: the /score request body (pydantic); openai_api.py: OpenAI's chat completions (pydantic request,
  response shapes); responses_api.py: OpenAI's Responses API (the request, the Response object, the streamed
  events); detokenize.py: the streaming detokenizer and stop strings;
- asgi.py: bind first, then serve under uvicorn; http_log.py: the key file and the access log;
- chat_page/: the chat page (access.py: who gets in; proxy.py: the API routes it forwards; static/: the page), a
  client of the endpoint's public routes.

Imports nothing from the trainer, the runner, Hydra or Prompt flow: serving/ and common/ are the Azure ML
deployment's code folder.
"""
