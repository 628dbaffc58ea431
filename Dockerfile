# ratelimitd: a small runtime image with the binary, the seed rules and a non-root user.
#
#   docker build -t ratelimitd .
#   docker run -p 8081:8081 -p 8080:8080 ratelimitd     # serves config/ (the seed policy)
#   docker run -v $PWD/rules:/etc/ratelimitd:ro -p 8081:8081 -p 8080:8080 ratelimitd
#
# No protoc is needed: build.rs compiles the vendored protos with protox.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
RUN cargo build --profile dist --locked --bin ratelimitd

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin ratelimitd
COPY --from=build /src/target/dist/ratelimitd /usr/local/bin/ratelimitd
# envoyproxy/ratelimit's image runs /bin/ratelimit: under that name, with no arguments, the same
# binary serves, configured by envoyproxy/ratelimit's variables (docs/envoyproxy-ratelimit.md).
# It writes nothing to disk, so a read-only root filesystem and any non-root uid work.
RUN ln -s /usr/local/bin/ratelimitd /bin/ratelimit
COPY config /etc/ratelimitd
USER 10001
ENV RATELIMITD_CONFIG=/etc/ratelimitd \
    RATELIMITD_GRPC_ADDR=0.0.0.0:8081 \
    RATELIMITD_HTTP_ADDR=0.0.0.0:8080 \
    RATELIMITD_LOG_FORMAT=json
# 8081: gRPC (RateLimitService, health, reflection); 8080: /healthcheck, /metrics, /rlconfig, /json
EXPOSE 8081 8080
# Asks the server's own grpc.health.v1.Health; NOT_SERVING while it drains after SIGTERM.
# With TLS on the gRPC port (RATELIMITD_GRPC_TLS_CERT and RATELIMITD_GRPC_TLS_KEY), set
# RATELIMITD_HEALTH_TLS_CA (and RATELIMITD_HEALTH_TLS_CERT, RATELIMITD_HEALTH_TLS_KEY when
# client certificates are required) so that this check speaks TLS too; the certificate must
# name 127.0.0.1, or set RATELIMITD_HEALTH_TLS_SERVER_NAME (docs/security.md).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["ratelimitd", "health", "--grpc-addr", "127.0.0.1:8081"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["ratelimitd"]
CMD ["serve"]
