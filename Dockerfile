# SemioFed: one image for every role (SuperLink, ServerApp submitter, registry, SuperNodes).
# The entry point is the `semiofed` console command; docker-compose.yml gives each service its
# subcommand. Build: docker build -t semiofed:0.1.0 .
FROM python:3.11-slim

# torch==2.13.0 from the package index: the CUDA build that sites with a GPU want.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_TELEMETRY_ENABLED=0

WORKDIR /opt/semiofed

# Only what the install needs (keeps .venv, runs and data out of the image).
COPY pyproject.toml README.md ./
COPY configs ./configs
COPY shared ./shared
COPY privacy ./privacy
COPY client ./client
COPY server ./server

# The pinned install of the Makefile's $(STAMP) target: pyproject's exact pins, every
# transitive package constrained by the lock, then mediapipe 0.10.21 on its own with
# --no-deps (its wheel ships the Holistic models; its protobuf<5 / numpy<2 pins are stale).
RUN pip install --upgrade pip setuptools==84.2.1 -c configs/requirements.lock \
    && pip install --no-build-isolation -c configs/requirements.lock . \
    && pip install --no-deps mediapipe==0.10.21 \
    && semiofed --help > /dev/null

# Every service runs as the unprivileged user semiofed (uid/gid 10001); the installed code
# stays root's, so the services cannot change it. The mount points of the named volumes are
# its own (Docker creates an empty volume with the mount point's owner and mode): /state
# (a site's ledger, approvals, trail) and /officer (the privacy officer's key, mounted only
# into the officer-* services, never into a SuperNode) are 0700.
RUN groupadd --system --gid 10001 semiofed \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/semiofed \
        --shell /usr/sbin/nologin semiofed \
    && mkdir -p /state /officer /runs /registry \
    && chown semiofed:semiofed /state /officer /runs /registry \
    && chmod 0700 /state /officer
USER 10001:10001

ENTRYPOINT ["semiofed"]
CMD ["--help"]
