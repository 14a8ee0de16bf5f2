# metah in one image: `metah serve` (the default command), `metah worker`, `metah migrate`, the CLI and the
# demo scripts. docker-compose.yml runs it with PostgreSQL; README "Docker".
#
#   docker build -t metah .          # CPU-only torch from PyTorch's index, everything else from PyPI
#   docker run -p 8000:8000 -e METAH_API_KEY=... -v metah-data:/data metah
#
# Offline or behind a mirror (scripts/docker-smoke.sh does this with a local wheelhouse and base image):
#   docker build --build-arg BASE_IMAGE=metah-base:bookworm \
#     --build-arg PIP_OPTIONS="--no-index --find-links=http://172.17.0.1:8765/ --trusted-host=172.17.0.1" .
#
# No `# syntax=` line and no RUN --mount: the classic builder (docker-compose v1, a machine that cannot pull the
# BuildKit frontend) builds it too. Build arguments end up in `docker history`: never put credentials in them.

# Any Debian bookworm image with python3.11 and python3-venv (scripts/build-base-image.sh makes one).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder

# Where pip looks: torch and torchvision from PyTorch's CPU-only index (their PyPI wheels pull in several GB
# of CUDA libraries that the CPU service never loads), everything else from PIP_INDEX_URL. PIP_OPTIONS is
# added to every pip call: e.g. "--no-index --find-links=DIR_OR_URL" for a wheelhouse.
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_OPTIONS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python3 -m venv /opt/venv

# Only the dependencies here: the runtime stage copies this venv (several GB), and that copy stays cached as
# long as the requirements do not change. The pins are read from the requirements files, the one place they are
# written (torch==2.14.1 accepts 2.14.1+cpu); setuptools>=68 (pyproject's build backend) is added for the
# editable install of the project in the runtime stage.
WORKDIR /tmp/requirements
COPY requirements.txt ./
# hadolint ignore=SC2086
RUN grep -E '^(torch|torchvision)==' requirements.txt > torch.txt \
    && /opt/venv/bin/pip install --no-cache-dir $PIP_OPTIONS \
        --index-url "$TORCH_INDEX_URL" --extra-index-url "$PIP_INDEX_URL" -r torch.txt \
    && /opt/venv/bin/pip install --no-cache-dir $PIP_OPTIONS --index-url "$PIP_INDEX_URL" \
        -r requirements.txt 'setuptools>=68'


FROM ${BASE_IMAGE} AS runtime

# A fixed uid/gid, so that bind-mounted data dirs can be chowned to it (chown -R 10001:10001 DIR).
RUN groupadd --system --gid 10001 metah \
    && useradd --system --uid 10001 --gid metah --create-home --home-dir /home/metah --shell /usr/sbin/nologin metah \
    && install -d -o metah -g metah -m 0750 /data

COPY --from=builder /opt/venv /opt/venv
# docker-compose.yml's entrypoint: exports the secrets that its `secrets` service generated into a volume, unless
# set in the environment. Not this image's ENTRYPOINT: `docker run` takes -e METAH_API_KEY=... as before.
COPY docker/metah-secrets.sh /usr/local/bin/metah-secrets
WORKDIR /app

# The project, installed in place (editable, offline: setuptools is in the venv) so that /app is the one copy
# of the code: `metah`, the demo scripts (`python -m scripts.run_demo`), workbench.datasets (reads /app/data/digits)
# and the web UI's files (service/static) all come from here. Owned by root: the service cannot modify itself.
COPY pyproject.toml README.md ./
COPY model model/
COPY index index/
COPY service service/
COPY migrations migrations/
COPY scripts scripts/
COPY workbench workbench/
COPY data data/
RUN /opt/venv/bin/pip install --disable-pip-version-check --no-cache-dir --no-index --no-build-isolation --no-deps -e . \
    && rm -rf ./*.egg-info build \
    && /opt/venv/bin/python -m compileall -q /app

# METAH_HOST=0.0.0.0: the server refuses to listen beyond loopback without METAH_API_KEY, so `docker run` needs
# -e METAH_API_KEY=... (no key is baked in).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg \
    METAH_HOST=0.0.0.0 \
    METAH_PORT=8000 \
    METAH_DATA_DIR=/data

USER 10001:10001
# matplotlib's font cache (training plots), built once here rather than at every container start.
RUN python -c "import matplotlib.font_manager"
# Images, index snapshots, model artefacts and (without METAH_DATABASE_URL) the SQLite database.
VOLUME ["/data"]
EXPOSE 8000

# /healthz answers 200 while the process is up (readiness is /readyz). urllib: no curl in the image.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('METAH_PORT', '8000'), timeout=4)"]

CMD ["metah", "serve"]
