# syntax=docker/dockerfile:1
# Build: docker build -t regcache .
# Run:   docker run -p 5000:5000 -p 127.0.0.1:9090:9090 -v regcache-cache:/var/cache/regcache regcache
# (/metrics and the probes answer through 9090; /admin/* and the status page
# only from the container's loopback, e.g. docker exec, or with the admin token)

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin regcache

FROM debian:bookworm-slim
# CA roots for https upstreams; nothing else is needed at run time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 regcache \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/cache/regcache --shell /usr/sbin/nologin regcache \
    && mkdir -p /var/cache/regcache /etc/regcache \
    && chown 10001:10001 /var/cache/regcache
COPY --from=build /src/target/release/regcache /usr/local/bin/regcache
COPY config/regcache.toml /usr/share/regcache/regcache.toml.example

# In a container the listeners face the container network; mount a config
# at /etc/regcache/regcache.toml or set REGCACHE_* to change anything.
ENV REGCACHE_LISTEN=0.0.0.0:5000 \
    REGCACHE_ADMIN_LISTEN=0.0.0.0:9090 \
    REGCACHE_CACHE_DIR=/var/cache/regcache \
    REGCACHE_LOG_FORMAT=json
# Numeric, so that a kubelet enforcing runAsNonRoot can tell it is not root
# (it refuses a named user); deploy/kubernetes/ uses the same IDs.
USER 10001:10001
VOLUME /var/cache/regcache
EXPOSE 5000 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/regcache", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/regcache"]
CMD ["serve"]
