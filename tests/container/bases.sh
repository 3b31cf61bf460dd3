#!/usr/bin/env bash
# Makes the two base images the Dockerfile starts FROM, without a container
# registry, when they are missing from podman's storage (which is their cache):
#   debian:bookworm-slim  a minbase Debian bookworm root from Debian's archive
#                         (debootstrap), without apt lists, documentation and
#                         locales, as the official slim image;
#   rust:1-bookworm       a bookworm root with gcc and libc6-dev (and the CA
#                         bundle the official image has), plus this machine's
#                         Rust toolchain (`rustc --print sysroot`) in /usr/local;
#                         made again when that toolchain's version changes.
# Usage: tests/container/bases.sh <podman command and global options...>
# e.g.   tests/container/bases.sh podman --runtime runc
set -euo pipefail
if [ "$#" -eq 0 ]; then
    echo "usage: $0 podman [global options]" >&2
    exit 2
fi
podman=("$@")
mirror=${HOOKGAUGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
runtime_image=localhost/debian:bookworm-slim
builder_image=localhost/rust:1-bookworm
toolchain_label=org.hookgauge.test.toolchain

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# debootstrap <dir> [packages...]: a minbase bookworm root in <dir>.
bootstrap() {
    local dir=$1
    shift
    local include=()
    if [ "$#" -gt 0 ]; then include=("--include=$(IFS=,; echo "$*")"); fi
    if ! debootstrap --variant=minbase "${include[@]}" bookworm "$dir" "$mirror" >"$work/debootstrap.log" 2>&1; then
        cat "$work/debootstrap.log" >&2
        echo "$0: debootstrap of $dir failed" >&2
        exit 1
    fi
    rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*
    # The official images point apt at deb.debian.org, whichever mirror made them.
    echo "deb http://deb.debian.org/debian bookworm main" >"$dir/etc/apt/sources.list"
}

if ! "${podman[@]}" image exists "$runtime_image"; then
    echo "$0: making $runtime_image with debootstrap"
    root="$work/runtime"
    bootstrap "$root"
    rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
        "$root"/usr/share/locale/*
    tar -C "$root" -c . | "${podman[@]}" import --quiet \
        --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        - "$runtime_image" >/dev/null
    rm -rf "$root"
fi

sysroot=$(rustc --print sysroot)
toolchain=$("$sysroot/bin/rustc" --version)
current=""
if "${podman[@]}" image exists "$builder_image"; then
    current=$("${podman[@]}" image inspect --format "{{ index .Labels \"$toolchain_label\" }}" "$builder_image")
fi
if [ "$current" != "$toolchain" ]; then
    echo "$0: making $builder_image with debootstrap and $toolchain"
    root="$work/builder"
    bootstrap "$root" gcc libc6-dev ca-certificates
    # rustc finds its libraries relative to itself: /usr/local is its sysroot.
    cp -a "$sysroot/bin/rustc" "$sysroot/bin/cargo" "$root/usr/local/bin/"
    cp -a "$sysroot/lib/." "$root/usr/local/lib/"
    mkdir -p "$root/usr/local/cargo"
    tar -C "$root" -c . | "${podman[@]}" import --quiet \
        --change 'CMD ["bash"]' \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change "LABEL $toolchain_label=\"$toolchain\"" \
        - "$builder_image" >/dev/null
    rm -rf "$root"
fi
