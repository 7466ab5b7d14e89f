# One image for all seven services; Kubernetes picks the service with `python -m onefold.<name>`
# (deploy/k8s). Build: docker build -t onefold:dev .
# Installs exactly what `make env` installs: pinned, hashed wheels from the committed locks, then the
# workspace members without dependencies, so nothing unpinned is ever fetched. No secrets in here:
# database URLs and keys come from Kubernetes Secrets at run time.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/onefold
ENV PATH=/opt/onefold/bin:$PATH
WORKDIR /src
# Dependencies first, in their own layer, so code changes do not reinstall them.
COPY requirements-bootstrap.lock requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements-bootstrap.lock \
 && pip install --require-hashes -r requirements.lock
# The workspace members (not libs/testing) as regular wheels, built with the pinned hatchling and no
# build isolation; each ships onefold/<name>/ under the shared `onefold` namespace.
COPY libs/contracts libs/contracts
COPY libs/platform libs/platform
COPY libs/eventlog libs/eventlog
COPY libs/cli libs/cli
COPY services services
RUN pip install --no-deps --no-build-isolation \
      ./libs/contracts ./libs/platform ./libs/eventlog ./libs/cli \
      ./services/ingest ./services/identity ./services/consent ./services/segments ./services/journeys \
      ./services/destinations ./services/insights \
 && python -m compileall -q /opt/onefold \
 && cd / && python -c "import onefold.ingest, onefold.identity, onefold.consent, onefold.segments, onefold.journeys, \
      onefold.destinations, onefold.insights"

FROM python:3.11-slim
RUN groupadd --system --gid 10001 onefold \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin onefold \
 && mkdir -p /var/lib/onefold \
 && chown 10001:10001 /var/lib/onefold
COPY --from=build /opt/onefold /opt/onefold
ENV PATH=/opt/onefold/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ONEFOLD_DATA_DIR=/var/lib/onefold \
    ONEFOLD_GRPC__HOST=0.0.0.0 \
    ONEFOLD_GRPC__PORT=50051
USER 10001:10001
WORKDIR /var/lib/onefold
EXPOSE 50051 8080
# Kubernetes sets the command per service; run by hand: docker run onefold:dev python -m onefold.ingest
CMD ["onefold", "--help"]
