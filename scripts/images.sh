#!/usr/bin/env bash
# Builds every image of the docker-compose deployment on a machine with no container
# registry: local base images made from Debian packages, then the same Dockerfiles a
# user builds, with those bases passed as build arguments.
#
#   scripts/images.sh            build what is missing or out of date (idempotent)
#   scripts/images.sh --list     print the images and their sizes
#
# 1. gwb-local/debian:bookworm-slim  a bookworm root filesystem from debootstrap
#    (minbase, docs and locales excluded like Docker's debian:*-slim), `docker import`ed.
#    Stands in for debian:bookworm-slim. The tarball is cached in $GWB_IMAGE_CACHE.
# 2. gwb-local/rust:<version>-bookworm  that base + gcc/libc6-dev/make/pkg-config from
#    Debian, a copy of this host's Rust toolchain (Debian's rustc is too old for the
#    workspace) and the CAs this host added to its trust store (cargo in the build goes
#    out the host's way). Stands in for rust:1.95-slim-bookworm.
# 3. gwb-collector, gwb-planner, gwb-writer, graph-sim (tag $GWB_IMAGE_TAG, default
#    local): deploy/Dockerfile with RUST_IMAGE and DEBIAN_IMAGE set to the bases above.
# 4. Lab images from Debian packages: gwb-lab/rabbitmq (rabbitmq-server),
#    gwb-lab/prometheus (prometheus), gwb-samba-dc (samba): deploy/rabbitmq,
#    deploy/prometheus and deploy/samba, on the same base.
# Grafana is not packaged by Debian: its official image stays in docker-compose.yml and
# the local lab run leaves it out (docker-compose.lab.yml).
#
# Builds reach the Debian mirror and crates.io (the registries this machine reaches);
# nothing is pulled from a container registry. Every image is labelled with a hash of
# its inputs (org.gwb.inputs): an image whose label matches is not rebuilt, and BuildKit
# keeps cargo's registry and target directory in cache mounts between builds.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${GWB_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gwb}
MIRROR=${GWB_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
TAG=${GWB_IMAGE_TAG:-local}
DEBIAN_BASE=gwb-local/debian:bookworm-slim
GWB_TARGETS=(gwb-collector gwb-planner gwb-writer graph-sim)

log() { printf 'images: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# BuildKit is needed for the Dockerfile's cache mounts. A CLI with buildx builds with
# BuildKit by default; Debian's docker.io 20.10 CLI (/usr/bin/docker) has it built in
# (DOCKER_BUILDKIT=1). A newer CLI without the buildx plugin only has the legacy builder.
if docker buildx version >/dev/null 2>&1; then
    BUILD=(docker build)
elif [[ -x /usr/bin/docker ]] && /usr/bin/docker version --format '{{.Client.Version}}' 2>/dev/null | grep -q '^20\.'; then
    BUILD=(env DOCKER_BUILDKIT=1 /usr/bin/docker build)
else
    die "no BuildKit: install the buildx plugin (Debian: docker-buildx) or Debian's docker.io CLI"
fi
docker info >/dev/null 2>&1 || die "no Docker engine answers"

label_of() { docker image inspect --format '{{ index .Config.Labels "org.gwb.inputs" }}' "$1" 2>/dev/null || true; }

# hash_inputs FILE_OR_DIR... : one hash over the files' names and contents.
hash_inputs() {
    local f
    for f in "$@"; do
        if [[ -d $f ]]; then
            find "$f" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
        else
            sha256sum "$f"
        fi
    done | sha256sum | cut -c1-16
}

# build IMAGE HASH ARGS... : docker build unless IMAGE already carries HASH.
build() {
    local image=$1 hash=$2
    shift 2
    if [[ $(label_of "$image") == "$hash" ]]; then
        log "$image is up to date"
        return 0
    fi
    log "building $image"
    local started=$SECONDS
    "${BUILD[@]}" --label "org.gwb.inputs=$hash" -t "$image" "$@" >"$CACHE/build-${image//[\/:]/_}.log" 2>&1 ||
        die "building $image failed; last lines of $CACHE/build-${image//[\/:]/_}.log:
$(tail -n 30 "$CACHE/build-${image//[\/:]/_}.log")"
    log "built $image in $((SECONDS - started))s"
}

debian_base() {
    local tarball=$CACHE/$SUITE-minbase.tar
    if [[ ! -s $tarball ]]; then
        command -v debootstrap >/dev/null 2>&1 || {
            log "installing debootstrap"
            DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap >/dev/null 2>&1 ||
                { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap >/dev/null; } ||
                die "apt-get install debootstrap failed"
        }
        local root=$CACHE/$SUITE-minbase
        if [[ ! -e $root/.complete ]]; then
            log "debootstrap $SUITE (minbase) from $MIRROR"
            rm -rf "$root"
            debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
                die "debootstrap failed; see $CACHE/debootstrap.log"
            touch "$root/.complete"
        fi
        log "slimming the root filesystem"
        # What Docker's debian:*-slim leaves out, for this and every later dpkg run.
        cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
EOF
        cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
EOF
        printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$root/etc/apt/apt.conf.d/docker-no-recommends"
        printf 'deb %s %s main\ndeb %s %s-updates main\ndeb http://deb.debian.org/debian-security %s-security main\n' \
            "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" "$SUITE" >"$root/etc/apt/sources.list"
        find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
        find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
        rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
            "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
            "$root"/var/log/* "$root"/tmp/* "$root/.complete"
        : >"$root/etc/machine-id"
        tar --numeric-owner -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
        touch "$root/.complete"
    fi
    local hash
    hash=$(sha256sum "$tarball" | cut -c1-16)
    if [[ $(label_of "$DEBIAN_BASE") == "$hash" ]]; then
        log "$DEBIAN_BASE is up to date"
        return 0
    fi
    log "importing $DEBIAN_BASE"
    docker import \
        --change "LABEL org.gwb.inputs=$hash" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        "$tarball" "$DEBIAN_BASE" >/dev/null
}

rust_base() {
    local sysroot version context hash
    sysroot=$(rustc --print sysroot) || die "no host Rust toolchain (rustup)"
    version=$(rustc --version | awk '{print $2}')
    RUST_BASE=gwb-local/rust:$version-bookworm
    context=$CACHE/rust-context
    hash=$( (rustc -vV; label_of "$DEBIAN_BASE"; cat deploy/images/rust.Dockerfile /usr/local/share/ca-certificates/*.crt 2>/dev/null) |
        sha256sum | cut -c1-16)
    if [[ $(label_of "$RUST_BASE") == "$hash" ]]; then
        log "$RUST_BASE is up to date"
        return 0
    fi
    # The toolchain without its documentation (share/ is docs, man pages and zsh completion).
    rm -rf "$context"
    mkdir -p "$context"
    cp -a --reflink=auto "$sysroot" "$context/rust"
    rm -rf "$context/rust/share"
    # Certificate authorities this host added to its trust store (a TLS-inspecting
    # egress proxy, say): cargo inside the build reaches crates.io through the same path.
    mkdir -p "$context/ca"
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$context/ca/"
    fi
    build "$RUST_BASE" "$hash" --build-arg "DEBIAN_IMAGE=$DEBIAN_BASE" \
        -f deploy/images/rust.Dockerfile "$context"
    rm -rf "$context"
}

gwb_images() {
    # One snapshot of the build's inputs (the workspace's files that git tracks or would
    # track, so target/ and secrets/ stay out) is the context of all four builds: they share one cargo build
    # even while the work tree changes under them, and its hash decides the rebuild.
    local context=$CACHE/context hash target
    rm -rf "$context"
    mkdir -p "$context"
    git ls-files -coz --exclude-standard -- Cargo.toml Cargo.lock crates proto tests deploy/Dockerfile .dockerignore |
        tar --null --no-recursion --ignore-failed-read -cf - -T - | tar -xf - -C "$context"
    hash=$( (cd "$context" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
        label_of "$RUST_BASE"; label_of "$DEBIAN_BASE") | sha256sum | cut -c1-16)
    for target in "${GWB_TARGETS[@]}"; do
        build "$target:$TAG" "$hash" -f "$context/deploy/Dockerfile" --target "$target" \
            --build-arg "RUST_IMAGE=$RUST_BASE" --build-arg "DEBIAN_IMAGE=$DEBIAN_BASE" "$context"
    done
}

lab_image() {
    local image=$1 dir=$2 hash
    hash=$( (hash_inputs "$dir"; label_of "$DEBIAN_BASE") | sha256sum | cut -c1-16)
    build "$image" "$hash" --build-arg "DEBIAN_IMAGE=$DEBIAN_BASE" "$dir"
}

list() {
    local image
    for image in "$DEBIAN_BASE" "$(docker images --format '{{.Repository}}:{{.Tag}}' 'gwb-local/rust' | head -n1)" \
        "${GWB_TARGETS[@]/%/:$TAG}" gwb-lab/rabbitmq:$TAG gwb-lab/prometheus:$TAG gwb-samba-dc:$TAG; do
        [[ -n $image ]] || continue
        docker image inspect --format "{{printf \"%-34s\" \"$image\"}} {{.Size}}" "$image" 2>/dev/null |
            awk '{printf "%s %6.1f MB\n", $1, $2/1000/1000}' || printf '%-34s (missing)\n' "$image"
    done
}

if [[ ${1:-} == --list ]]; then
    list
    exit 0
fi

mkdir -p "$CACHE"
started=$SECONDS
debian_base
rust_base
gwb_images
lab_image "gwb-lab/rabbitmq:$TAG" deploy/rabbitmq
lab_image "gwb-lab/prometheus:$TAG" deploy/prometheus
lab_image "gwb-samba-dc:$TAG" deploy/samba
log "all images ready in $((SECONDS - started))s"
list >&2
