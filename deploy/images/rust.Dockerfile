# A stand-in for rust:<version>-slim-bookworm where no registry can be reached
# (scripts/images.sh): the local bookworm base, Debian's C toolchain (ring and the
# bundled SQLite compile C), the host's Rust toolchain (the context's rust/) and the
# host's added certificate authorities (ca/).
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev make pkg-config ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY rust /usr/local/rust
# The host's own certificate authorities (scripts/images.sh copies them; may be none).
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
# As in the official image: CARGO_HOME=/usr/local/cargo (its registry/ is the cache mount).
ENV CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/cargo/bin && cargo --version && rustc --version
