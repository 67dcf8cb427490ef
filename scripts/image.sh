#!/usr/bin/env bash
# make image: the container image without a Docker daemon or registry access.
#
# Builds a statically linked release `serin` on this machine, stages it with the CA
# bundle, and runs `buildah build --target prebuilt` (chroot isolation, vfs storage:
# what a VM without a daemon or overlayfs privileges needs). Tags serin:<version>
# (the version is Cargo.toml's, read back from the binary) and writes an OCI archive.
#
# Environment:
#   CARGO_TARGET_DIR     cargo's target dir (default: ./target)
#   SERIN_IMAGE_OUT      where the OCI archive goes (default: $CARGO_TARGET_DIR/image)
#   SERIN_BUILDAH_ROOT   buildah's storage (default: ~/.cache/serin-buildah)
#   SERIN_INSTALL_DEPS=1 apt-get install buildah when missing (CI); otherwise a
#                        missing buildah is an error that names the package
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
OUT=${SERIN_IMAGE_OUT:-$TARGET_DIR/image}
STORE=${SERIN_BUILDAH_ROOT:-$HOME/.cache/serin-buildah}
TRIPLE=x86_64-unknown-linux-gnu
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

log() { printf '[image] %s\n' "$*" >&2; }
die() {
  log "FAILED: $*"
  exit 1
}

if ! command -v buildah >/dev/null && ! command -v podman >/dev/null; then
  if [[ ${SERIN_INSTALL_DEPS:-} == 1 && $(id -u) -eq 0 ]]; then
    log "installing buildah (Debian package buildah)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah; } >&2 ||
      die "apt-get install buildah failed"
  else
    die "neither buildah nor podman is installed: install Debian's 'buildah' package (apt-get install buildah) or 'podman'"
  fi
fi
[[ -f $CA_BUNDLE ]] || die "$CA_BUNDLE missing: install Debian's 'ca-certificates' package"

log "building a static serin (cargo build --release --target $TRIPLE, +crt-static)"
# RUSTFLAGS with --target apply to the target only, so build scripts and the
# host's debug builds in the same target dir are not rebuilt.
(cd "$REPO" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=$TARGET_DIR \
  cargo build -q --release --locked -p serin --target "$TRIPLE") || die "cargo build failed"
BIN=$TARGET_DIR/$TRIPLE/release/serin
# A static-pie binary lists no libraries ("=>"); a dynamic one does.
if ldd "$BIN" 2>&1 | grep "=>" >/dev/null; then die "$BIN is dynamically linked"; fi

VERSION=$("$BIN" --version | awk '{print $2}')
[[ -n $VERSION ]] || die "could not read the version from $BIN --version"
TAG=serin:$VERSION

CTX=$(mktemp -d)
trap 'rm -rf "$CTX"' EXIT
cp "$BIN" "$CTX/serin"
strip "$CTX/serin" 2>/dev/null || true
cp "$CA_BUNDLE" "$CTX/ca-certificates.crt"
cp "$REPO/Dockerfile" "$CTX/Dockerfile"

mkdir -p "$OUT" "$STORE"
ARCHIVE=$OUT/serin-$VERSION.oci.tar
if command -v buildah >/dev/null; then
  B=(buildah --root "$STORE/root" --runroot "$STORE/run" --storage-driver vfs)
  log "buildah build --target prebuilt -t $TAG"
  "${B[@]}" build --quiet --isolation chroot --target prebuilt --layers=false \
    -t "$TAG" -f "$CTX/Dockerfile" "$CTX" >/dev/null || die "buildah build failed"
  rm -f "$ARCHIVE"
  "${B[@]}" push --quiet "$TAG" "oci-archive:$ARCHIVE:$TAG" >/dev/null || die "buildah push to $ARCHIVE failed"
  SIZE=$("${B[@]}" images --format '{{.Size}}' "$TAG" | head -1)
else
  P=(podman --root "$STORE/root" --runroot "$STORE/run" --storage-driver vfs)
  log "podman build --target prebuilt -t $TAG"
  "${P[@]}" build --quiet --isolation chroot --target prebuilt \
    -t "$TAG" -f "$CTX/Dockerfile" "$CTX" >/dev/null || die "podman build failed"
  rm -f "$ARCHIVE"
  "${P[@]}" save --quiet --format oci-archive -o "$ARCHIVE" "$TAG" || die "podman save to $ARCHIVE failed"
  SIZE=$("${P[@]}" images --format '{{.Size}}' "$TAG" | head -1)
fi

echo "image $TAG: $SIZE (binary $(du -h "$CTX/serin" | cut -f1), OCI archive $(du -h "$ARCHIVE" | cut -f1))"
echo "archive: $ARCHIVE"
