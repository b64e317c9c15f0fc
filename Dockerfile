# One image for the API, the worker and the migrate job.
# The base is pinned to the exact Python release the tests run on.
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

WORKDIR /srv/pagelens
# torch first and pinned to the CPU build: an unpinned resolve pulls several GB of CUDA libraries.
# It is kept out of the lock, whose hashes would be PyPI's (CUDA) build; its dependencies are in it.
RUN pip install --no-deps --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
# The runtime lock (no dev tools), every file checked against its hash.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY app app
COPY worker worker
COPY observability observability
COPY migrations migrations
RUN pip install --no-deps --no-build-isolation -e . && pip check && useradd --system --uid 10001 pagelens
USER pagelens
EXPOSE 8000 9191
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--no-access-log"]
