#!/bin/bash
# Builds target/deb/libnginx-mod-http-sse_<version>-<revision>_<arch>.deb from a
# module built by `make build`, in the layout of Debian's own libnginx-mod-*
# packages (see packaging/README.md). Called by `make deb`.
#
#   packaging/build-deb.sh MODULE.so OUTDIR
#
# Environment: NGINX_SRC (nginx-dev's tree, default /usr/share/nginx/src),
# DEB_REVISION (default 1), DEB_MAINTAINER ("Name <email>", default: the git
# identity of the checkout), DEB_BUILD_OPTIONS (nostrip keeps the debug info).
set -euo pipefail

MODULE=${1:?usage: build-deb.sh MODULE.so OUTDIR}
OUTDIR=${2:?usage: build-deb.sh MODULE.so OUTDIR}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
NGINX_SRC=${NGINX_SRC:-/usr/share/nginx/src}
DEB_REVISION=${DEB_REVISION:-1}

PKG=libnginx-mod-http-sse
SO=ngx_http_sse_module.so
CONF=mod-http-sse.conf

die() { echo "build-deb: $*" >&2; exit 1; }
[ -f "$MODULE" ] || die "$MODULE missing: run 'make build'"

# Version: [package] version of Cargo.toml, plus the Debian revision.
upstream=$(awk '/^\[/ { sect = $0 } sect == "[package]" && /^version *=/ { gsub(/[" ]/, "", $0); sub(/^version=/, "", $0); print; exit }' "$REPO/Cargo.toml")
[ -n "$upstream" ] || die "no [package] version in Cargo.toml"
version=$upstream-$DEB_REVISION
arch=$(dpkg --print-architecture)

# The nginx ABI the module was built for. The tree `make build` configures is
# $NGINX_SRC (nginx-dev), and nginx-dev ships the ABI next to it, in the
# substvars file dh_nginx itself reads for Debian's modules (nginx:abi=...).
# Fallback (a tree without that file): the nginx-abi-* that the installed nginx
# package Provides, which nginx-dev's exact-version Depends makes the same one.
abi_file=$NGINX_SRC/debian/libnginx-mod.abisubstvars
abi=
if [ -f "$abi_file" ]; then
  abi=$(sed -n 's/^nginx:abi=\(nginx-abi-[^[:space:]]*\)[[:space:]]*$/\1/p' "$abi_file" | head -1)
  abi_source=$abi_file
fi
installed_abi=$(dpkg-query -W -f='${Provides}\n' nginx nginx-core nginx-common 2>/dev/null | tr ',' '\n' | sed -n 's/^ *\(nginx-abi-[^ ]*\).*/\1/p' | head -1) || true
if [ -z "$abi" ]; then
  echo "build-deb: warning: no nginx:abi in $abi_file; using the installed nginx's Provides" >&2
  abi=$installed_abi
  abi_source="Provides of the installed nginx package"
fi
[ -n "$abi" ] || die "cannot tell the nginx ABI: neither $abi_file nor an installed nginx providing nginx-abi-*"
if [ -n "$installed_abi" ] && [ "$installed_abi" != "$abi" ]; then
  echo "build-deb: warning: nginx-dev says $abi but the installed nginx provides $installed_abi" >&2
fi
nginx_dev_version=$(dpkg-query -W -f='${Version}' nginx-dev 2>/dev/null || echo unknown)

# Staging tree (debian/<package>/ so that dpkg-shlibdeps analyses it in place).
work=$OUTDIR/build
root=$work/debian/$PKG
rm -rf "$work"
rm -f "$OUTDIR"/${PKG}_*.deb
umask 022
install -d "$root/DEBIAN" "$root/usr/lib/nginx/modules" "$root/usr/share/nginx/modules-available" \
  "$root/usr/share/nginx-sse" "$root/usr/share/doc/$PKG"

install -m 644 "$MODULE" "$root/usr/lib/nginx/modules/$SO"
# Stripped as dh_strip strips Debian's modules (their debug info goes to -dbgsym
# packages; here the unstripped build stays in target/release).
case " ${DEB_BUILD_OPTIONS:-} " in
  *" nostrip "*) stripped=no ;;
  *) strip --remove-section=.comment --remove-section=.note --strip-unneeded "$root/usr/lib/nginx/modules/$SO"
     stripped=yes ;;
esac
install -m 644 "$HERE/debian/$CONF" "$root/usr/share/nginx/modules-available/$CONF"
install -m 644 "$REPO/redis/sse.lua" "$root/usr/share/nginx-sse/sse.lua"
install -m 644 "$HERE/debian/copyright" "$root/usr/share/doc/$PKG/copyright"
for s in postinst prerm postrm; do install -m 755 "$HERE/debian/$s" "$root/DEBIAN/$s"; done

# changelog.Debian.gz: one entry for this build, dated by the last commit.
if [ -z "${DEB_MAINTAINER:-}" ]; then
  name=$(git -C "$REPO" config user.name 2>/dev/null || true)
  email=$(git -C "$REPO" config user.email 2>/dev/null || true)
  if [ -n "$name" ] && [ -n "$email" ]; then DEB_MAINTAINER="$name <$email>"
  else DEB_MAINTAINER="nginx-sse maintainers <root@localhost>"; fi
fi
commit=$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown)
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)}
date=$(LC_ALL=C date -u -R -d "@$epoch")
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-unstable}")
{
  echo "$PKG ($version) $codename; urgency=medium"
  echo
  echo "  * nginx-sse $upstream (git $commit) built against nginx-dev"
  echo "    $nginx_dev_version ($abi)."
  echo
  echo " -- $DEB_MAINTAINER  $date"
} | gzip -9n > "$root/usr/share/doc/$PKG/changelog.Debian.gz"
chmod 644 "$root/usr/share/doc/$PKG/changelog.Debian.gz"

# Shared library dependencies, as dh_shlibdeps computes them.
printf 'Source: nginx-sse\n\nPackage: %s\nArchitecture: any\n' "$PKG" > "$work/debian/control"
shlibs=$(cd "$work" && dpkg-shlibdeps -O "debian/$PKG/usr/lib/nginx/modules/$SO" | sed -n 's/^shlibs:Depends=//p')

installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<EOF
Package: $PKG
Source: nginx-sse
Version: $version
Architecture: $arch
Maintainer: $DEB_MAINTAINER
Installed-Size: $installed_size
Depends: $abi${shlibs:+, $shlibs}
Suggests: redis-server
Section: httpd
Priority: optional
Description: Server-Sent Events gateway for nginx, fed by Redis pub/sub
 nginx-sse is an nginx module: locations with sse_channel answer
 text/event-stream and relay the messages published on Redis channels to
 every browser subscribed to them, from nginx's own event loop, with one
 Redis subscription per worker.
 .
 The package enables the module (modules-enabled/50-mod-http-sse.conf) and
 ships the Redis function for publishing with history at
 /usr/share/nginx-sse/sse.lua.
EOF
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
chmod 644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums"

deb=$OUTDIR/${PKG}_${version}_${arch}.deb
dpkg-deb --build --root-owner-group -Zxz "$root" "$deb" >/dev/null
echo "built $deb"
echo "  Depends: $abi${shlibs:+, $shlibs} (ABI from $abi_source)"
echo "  module stripped: $stripped"
