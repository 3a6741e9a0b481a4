#!/bin/sh
# The local base of the serving image, for hosts that cannot pull BentoML's default
# (python:3.11-slim): Debian 12 from Debian's packages, imported with buildah.
#
#   deploy/container/build-base.sh UV_BINARY [IMAGE]      (as root; `make container-base`)
#
# debootstrap minbase + python3 (3.11, the Python riskloop is locked for), python3-venv and
# ca-certificates; bookworm-updates and -security applied; apt and dpkg set up as in Debian's
# own container images (no docs, man pages or translations; apt's caches removed after each
# install); the uv binary riskloop locks, so BentoML's Dockerfile (`command -v uv || pip
# install uv`, then `uv venv --python 3.11`) makes the venv from this Python and downloads none.
# /etc/uv/uv.toml (a placeholder) and /root/.cache exist so that pipelines/container.py can mount
# the build host's uv settings and uv's cache over them without leaving mount points behind.
# Nothing of the build host stays: debootstrap's copies of its resolv.conf and hostname go.
# podman/buildah settings come from the caller's CONTAINERS_CONF / CONTAINERS_STORAGE_CONF.
set -eu

uv=${1:?usage: build-base.sh UV_BINARY [IMAGE]}
image=${2:-localhost/riskloop-base:bookworm}
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
work=${RISKLOOP_CONTAINER_DIR:-/var/tmp/riskloop-containers}

[ "$(id -u)" = 0 ] || { echo "build-base.sh: debootstrap needs root" >&2; exit 1; }
mkdir -p "$work"
scratch=$(mktemp -d "$work/base-XXXXXX")
ctr=
cleanup() {
    [ -z "$ctr" ] || buildah rm "$ctr" >/dev/null 2>&1 || true
    rm -rf "$scratch"
}
trap cleanup EXIT INT TERM
rootfs=$scratch/rootfs

echo "debootstrap $suite from $mirror ..."
if ! debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$suite" "$rootfs" "$mirror" >"$scratch/debootstrap.log" 2>&1; then
    tail -n 30 "$scratch/debootstrap.log" >&2
    exit 1
fi

rm -f "$rootfs/etc/resolv.conf" "$rootfs/etc/hostname"
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security $suite-security main
EOF
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/riskloop-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
cat >"$rootfs/etc/apt/apt.conf.d/riskloop-slim" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
Acquire::GzipIndexes "true";
Acquire::CompressionTypes::Order:: "gz";
APT::AutoRemove::SuggestsImportant "false";
EOF
# what the dpkg excludes would have kept out of the packages debootstrap installed
find "$rootfs/usr/share/doc" -mindepth 2 ! -type d ! -name copyright -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

install -m 0755 "$uv" "$rootfs/usr/local/bin/uv"
install -d -m 0755 "$rootfs/etc/uv"
cat >"$rootfs/etc/uv/uv.toml" <<'EOF'
# riskloop: `make container` mounts its build-time uv settings over this file during a
# build; the image itself sets none.
EOF
install -d -m 0700 "$rootfs/root/.cache"

ctr=$(buildah from scratch)
mnt=$(buildah mount "$ctr")
# tar keeps owners, groups and setuid bits exactly (`buildah copy` would make everything root's)
tar -C "$rootfs" -cf - . | tar -C "$mnt" -xpf - --numeric-owner
buildah umount "$ctr" >/dev/null
echo "security and point-release updates ..."
buildah run --network host "$ctr" -- sh -c 'apt-get update -q >/dev/null &&
    DEBIAN_FRONTEND=noninteractive apt-get upgrade -y -q >/dev/null && rm -rf /var/lib/apt/lists/*'
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd /bin/bash \
    --label org.opencontainers.image.title=riskloop-base \
    --label "org.opencontainers.image.description=Debian $suite minbase + python3 + uv: riskloop's offline base" \
    --label "org.opencontainers.image.base.name=debootstrap:$suite" "$ctr"
buildah commit --rm --quiet --format docker "$ctr" "$image" >/dev/null
ctr=
echo "built $image"
