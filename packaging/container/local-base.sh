#!/bin/sh
# A Debian base image made on this machine, for building the image where no registry is reachable:
#   packaging/container/local-base.sh [IMAGE [SUITE]]     (root; default localhost/debian-base:bookworm)
# debootstrap --variant=minbase fetches the suite from the mirror apt already uses, and the tree
# is imported as a single-layer image.  Needs debootstrap and podman (or docker).
set -eu
image=${1:-localhost/debian-base:bookworm}
suite=${2:-bookworm}
engine=${CONTAINER_ENGINE:-$(command -v podman || command -v docker || true)}
[ -n "$engine" ] || { echo "local-base: neither podman nor docker is installed" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "local-base: debootstrap is not installed" >&2; exit 1; }

# The mirror: the first Debian URI in apt's sources (deb822 or one-line format), else deb.debian.org.
mirror=$( (cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
             | awk 'tolower($1)=="uris:" && $2 ~ /\/debian\/?$/ {print $2; exit}';
           cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
             | awk '$1=="deb" {for (i=2;i<=NF;i++) if ($i ~ /^https?:.*\/debian\/?$/) {print $i; exit}}') \
          | head -n 1)
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d "${TMPDIR:-/tmp}/debian-base.XXXXXX")
trap 'rm -rf "$root"' EXIT
echo "local-base: debootstrap --variant=minbase $suite from $mirror" >&2
debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$root.log" 2>&1 \
  || { tail -n 20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
# As the official slim images: no package lists or caches in the image.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
tar -C "$root" -c . | "$engine" import - "$image" >/dev/null
echo "local-base: imported $image" >&2
