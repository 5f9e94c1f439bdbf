# syntax=docker/dockerfile:1
# The ladder-app image: one static (musl) release binary on an empty base, run as a
# non-root user, with no shell and no package manager to exploit.
#
# With a Docker daemon or BuildKit, from the repository root:
#   docker build -f deploy/images/ladder-app.Dockerfile -t ghcr.io/ladder-dev/ladder-app:0.1.0 .
# Without one, `make images` (hack/images.sh) builds the same binary on the
# host and assembles this file's final stage with umoci: it reads the stage's
# USER, EXPOSE, ENTRYPOINT, CMD and LABEL lines from here, so the two cannot
# drift (e2e/tests/images.rs checks the result against this file).
#
# VERSION must equal the workspace version in Cargo.toml (checked by the test).
ARG VERSION=0.1.0

FROM docker.io/library/rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl \
 && apt-get update && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# ring and SQLite compile C: musl-gcc makes that C static too.
ENV CC_x86_64_unknown_linux_musl=musl-gcc
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p ladder-app \
 && install -D -s target/x86_64-unknown-linux-musl/release/ladder-app /out/ladder-app \
 && printf 'nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n' > /out/passwd \
 && printf 'nonroot:x:65532:\n' > /out/group

FROM scratch
ARG VERSION
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/passwd /etc/passwd
COPY --from=build /out/group /etc/group
COPY --from=build /out/ladder-app /ladder-app
USER 65532:65532
EXPOSE 8080/tcp
ENTRYPOINT ["/ladder-app"]
CMD ["serve"]
LABEL org.opencontainers.image.title="ladder-app"
LABEL org.opencontainers.image.description="Ladder's companion link shortener, run on every phase's data tier"
LABEL org.opencontainers.image.version="${VERSION}"
LABEL org.opencontainers.image.source="https://github.com/ladder-dev/ladder"
LABEL org.opencontainers.image.licenses="Apache-2.0"
LABEL org.opencontainers.image.vendor="Ladder"
