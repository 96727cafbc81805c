#!/usr/bin/env bash
# Builds the Debian package of webinar_sessions for Debian's PostgreSQL 15:
#   package/deb.sh [OUTDIR]      (default target/package)
# writes OUTDIR/postgresql-15-webinar-sessions_<version>_amd64.deb and prints its path last.
# The package holds what `cargo pgrx install` would put on the machine (the library, the control
# file, the install script and every upgrade script), a release build, so installing it needs
# neither Rust nor cargo-pgrx. Needs what .ci/setup.sh installs.
set -euo pipefail
here=$(dirname "$0")
out=$(realpath -m "${1:-$here/../target/package}") # relative to the caller's folder
cd "$here/.."
export PATH="$HOME/.cargo/bin:/usr/lib/postgresql/15/bin:$PATH"
pg_config=/usr/bin/pg_config

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
major=$("$pg_config" --version | sed 's/^PostgreSQL \([0-9]*\).*/\1/')
name="postgresql-$major-webinar-sessions"
arch=$(dpkg --print-architecture)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"
cargo pgrx package --pg-config "$pg_config" --out-dir "$root" >&2

library="$root$("$pg_config" --pkglibdir)/webinar_sessions.so"
[ -f "$library" ] || { echo "deb.sh: cargo pgrx package wrote no $library" >&2; exit 1; }
# As Debian ships its own modules: stripped of debugging symbols, not executable.
strip --strip-unneeded "$library"
chmod 0644 "$library"
# The newest glibc symbol version the library uses is the one it needs.
glibc=$(objdump -T "$library" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)

doc="$root/usr/share/doc/$name"
mkdir -p "$doc" "$root/DEBIAN"
cp README.md "$doc/README.md"
cat >"$doc/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: webinar_sessions

Files: *
License: Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPYRIGHT

cat >"$root/DEBIAN/control" <<CONTROL
Package: $name
Version: $version
Architecture: $arch
Maintainer: webinar_sessions developers <webinar-sessions@localhost>
Section: database
Priority: optional
Depends: postgresql-$major, libc6 (>= $glibc)
Installed-Size: $(du -sk "$root" | cut -f1)
Description: webinar viewer sessions inside PostgreSQL $major
 A PostgreSQL extension that tracks who watches a webinar and for how long:
 enter / heartbeat / leave functions callable through PostgREST (supabase.rpc),
 buffered heartbeats in shared memory, a background worker that sweeps stale
 sessions in one statement, and watch-time statistics. Add webinar_sessions to
 shared_preload_libraries for the worker and the buffer, then
 CREATE EXTENSION webinar_sessions.
CONTROL

mkdir -p "$out"
deb="$out/${name}_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >&2
echo "$deb"
