#!/usr/bin/env bash
# Builds leafd-<version>.pkg: installs /usr/local/bin/leafd and, for the user logged in at the
# console, starts the agent at login (the postinstall runs `leafd install` as that user).
# Runs on a Mac only (pkgbuild, productbuild); untested on Linux CI, where it is only checked
# with `bash -n` and ShellCheck. Signs with SIGN_IDENTITY="Developer ID Installer: …" if set.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(uname -s)" != "Darwin" ]; then
  echo "build-pkg.sh: run this on a Mac (it needs pkgbuild and productbuild)" >&2
  exit 1
fi

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
packaging/build-universal.sh

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
install -d "$work/root/usr/local/bin" "$work/root/usr/local/share/leafd"
install -m 0755 target/universal/leafd "$work/root/usr/local/bin/leafd"
install -m 0644 launchd/org.leafd.agent.plist "$work/root/usr/local/share/leafd/"

pkgbuild --root "$work/root" \
  --scripts packaging/pkg/scripts \
  --identifier org.leafd.pkg \
  --version "$version" \
  --install-location / \
  "$work/leafd-component.pkg"

sign=()
if [ -n "${SIGN_IDENTITY:-}" ]; then
  sign=(--sign "$SIGN_IDENTITY")
fi
productbuild --package "$work/leafd-component.pkg" "${sign[@]}" "target/leafd-$version.pkg"
echo "built target/leafd-$version.pkg"
