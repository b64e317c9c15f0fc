# One image for the API, the worker and the migrate job.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

WORKDIR /srv/pagelens
# torch first and pinned to the CPU build: an unpinned resolve pulls several GB of CUDA libraries.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY app app
COPY worker worker
COPY observability observability
COPY migrations migrations
RUN pip install -e . && useradd --system --uid 10001 pagelens
USER pagelens
EXPOSE 8000 9191
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--no-access-log"]
