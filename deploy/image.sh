#!/usr/bin/env bash
# Builds the Outrigger container image FROM scratch: no base image is pulled, so it works
# without a registry. The root filesystem is the release binary (stripped), exactly the shared
# libraries `ldd` lists for it, a passwd entry for the unprivileged user 65532 and an empty
# /data owned by that user; deploy/Containerfile adds the defaults.
#
#   deploy/image.sh [TAG]            # default tag outrigger:latest
#
# OUTRIGGER_IMAGE_BIN names a binary to package instead of building target/image/outrigger
# (the `image` cargo profile: release, optimised across crates, no symbols).
# OUTRIGGER_CONTAINER_ENGINE picks the engine (default: podman, else docker). Prints the tag
# and the image size on its last line.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tag=${1:-outrigger:latest}

# podman on these machines needs runc and cgroupfs spelled out (no systemd, no crun).
engine=()
case "${OUTRIGGER_CONTAINER_ENGINE:-}" in
  "") if command -v podman >/dev/null; then
        engine=(podman)
        if [ -x /usr/sbin/runc ]; then engine+=(--runtime /usr/sbin/runc --cgroup-manager=cgroupfs); fi
      elif command -v docker >/dev/null; then
        engine=(docker)
      else
        echo "image.sh: neither podman nor docker is installed" >&2; exit 1
      fi ;;
  *) read -r -a engine <<<"$OUTRIGGER_CONTAINER_ENGINE" ;;
esac

binary=${OUTRIGGER_IMAGE_BIN:-}
if [ -z "$binary" ]; then
  (cd "$ROOT" && cargo build --locked --profile image --bin outrigger)
  binary="$ROOT/target/image/outrigger"
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
rootfs="$context/rootfs"
mkdir -p "$rootfs/etc" "$rootfs/tmp" "$context/owned/data"

# Symbols and line tables are for profiling, not for the image.
strip --strip-all -o "$rootfs/outrigger" "$binary"
chmod 0755 "$rootfs/outrigger"

# Every library the dynamic loader will open, at the path it will look for it (the loader
# itself appears as an absolute path without "=>").
libraries=$(ldd "$binary" | awk '/=> \// {print $3} /^[[:space:]]*\// {print $1}')
if [ -z "$libraries" ]; then
  echo "image.sh: ldd lists no libraries for $binary (a static binary needs none)" >&2
fi
for lib in $libraries; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done

cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/:/sbin/nologin
outrigger:x:65532:65532:outrigger:/data:/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
outrigger:x:65532:
EOF
# glibc resolves host names (a Postgres service name, a collector) with these two sources.
echo "hosts: files dns" >"$rootfs/etc/nsswitch.conf"
chmod 1777 "$rootfs/tmp"
chmod 0700 "$context/owned/data"

# Ownership is set in the archive, so the build needs no privileges and no RUN step.
tar_flags=(--sort=name --mtime=@0 --numeric-owner)
tar -C "$rootfs" -cf "$context/rootfs.tar" "${tar_flags[@]}" --owner=0 --group=0 .
tar -C "$context/owned" -rf "$context/rootfs.tar" "${tar_flags[@]}" --owner=65532 --group=65532 ./data
cp "$ROOT/deploy/Containerfile" "$context/Containerfile"

"${engine[@]}" build --format docker -q -t "$tag" -f "$context/Containerfile" "$context" >/dev/null
size=$("${engine[@]}" image inspect --format '{{.Size}}' "$tag")
echo "built $tag: $size bytes"
