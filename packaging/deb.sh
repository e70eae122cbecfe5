#!/usr/bin/env bash
# packaging/deb.sh: build dist/stapler_<version>_<arch>.deb from this checkout.
#
# The version comes from `git describe` (a tag v1.2.3 gives 1.2.3; commits after it give
# 1.2.3+git<n>.<hash>; without a tag, 0.0.0+git<n>.<hash>), and `stapler version` prints what
# git describe said. The package is assembled by nfpm (github.com/goreleaser/nfpm/v2), built by
# the Go toolchain from the module proxy like every other dependency: nothing is downloaded
# as a binary. The man page comes from stapler itself (`stapler man`), so it says what --help
# says.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

nfpm=github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2
arch=$(go env GOARCH)
described=$(git describe --tags --always --dirty --match 'v[0-9]*' 2>/dev/null || echo unknown)
commits=$(git rev-list --count HEAD 2>/dev/null || echo 0)
hash=$(git rev-parse --short=12 HEAD 2>/dev/null || echo 0)
dirty=""
git diff --quiet HEAD 2>/dev/null || dirty=".dirty"
if tag=$(git describe --tags --abbrev=0 --match 'v[0-9]*' 2>/dev/null); then
  since=$(git rev-list --count "$tag"..HEAD)
  deb_version=${tag#v}
  if [ "$since" -gt 0 ] || [ -n "$dirty" ]; then
    deb_version="$deb_version+git$since.$hash$dirty"
  fi
else
  deb_version="0.0.0+git$commits.$hash$dirty"
fi

build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT

CGO_ENABLED=0 go build -trimpath -buildvcs=false \
  -ldflags "-s -w -X main.packagedVersion=$described" -o "$build/stapler" .

"$build/stapler" man | gzip -9n >"$build/stapler.8.gz"

# The units of contrib/, for the paths a package uses.
for unit in stapler.service stapler.timer; do
  sed -e 's|/usr/local/bin/stapler|/usr/bin/stapler|g' \
    -e 's|^Documentation=.*|Documentation=man:stapler(8) file:///usr/share/doc/stapler/README.md|' \
    "contrib/$unit" >"$build/$unit"
done

date=$(git log -1 --format=%aD 2>/dev/null || date -R)
{
  echo "stapler ($deb_version) unstable; urgency=medium"
  echo
  echo "  * Built from git $described."
  echo
  echo " -- stapler developers <stapler@example.org>  $date"
} | gzip -9n >"$build/changelog.gz"

# nfpm expands environment variables in a few fields only: the configuration is filled in here.
sed -e "s|\${STAPLER_ARCH}|$arch|g" -e "s|\${STAPLER_DEB_VERSION}|$deb_version|g" \
  -e "s|\${STAPLER_BUILD}|$build|g" packaging/nfpm.yaml >"$build/nfpm.yaml"
mkdir -p dist
go run "$nfpm" package --config "$build/nfpm.yaml" --packager deb --target dist/
ls dist/stapler_"${deb_version}"_"$arch".deb
