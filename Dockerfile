# Discograph image: the `discograph` CLI (migrate, deploy, index, api, minter, ...) plus anvil, so
# one image serves every service in docker-compose.yml.
#
# linux/amd64 only: the anvil binary comes from the npm package @foundry-rs/anvil-linux-amd64,
# pinned in package-lock.json like the rest of the toolchain (other hosts build under emulation).

# --- Stage 1: npm toolchain (anvil binary, solc) from the lockfile -----------------------------
FROM --platform=linux/amd64 node:20-bookworm-slim AS node
WORKDIR /build
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

# --- Stage 2: build the Python project into a self-contained venv ------------------------------
FROM --platform=linux/amd64 python:3.11-slim-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The whole context (trimmed by .dockerignore) because setuptools needs pyproject.toml, the README
# and every package listed there, including the compiled ABI JSON in abis/.
COPY . .
RUN pip install --no-cache-dir .

# --- Stage 3: runtime, no compilers, no node, non-root ------------------------------------------
FROM --platform=linux/amd64 python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 discograph \
    && useradd --system --uid 10001 --gid discograph --create-home --home-dir /home/discograph \
        --shell /usr/sbin/nologin discograph
# Same base image as the builder, so the venv's interpreter symlinks stay valid.
COPY --from=builder /opt/venv /opt/venv
COPY --from=node /build/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil /usr/local/bin/anvil
WORKDIR /app
COPY alembic.ini ./
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
USER discograph
# 8000: HTTP API; 9100: Prometheus metrics of the indexer and minter.
EXPOSE 8000 9100
ENTRYPOINT ["discograph"]
CMD ["--help"]
