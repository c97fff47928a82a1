#!/usr/bin/env bash
# Builds target/leafd-<version>.pkg: installs /usr/local/bin/leafd (universal) and the
# LaunchAgent template in /usr/local/share/leafd/, and its postinstall starts the agent for the
# user logged in at the console (`leafd install` as that user). Signs the package when
# SIGN_IDENTITY="Developer ID Installer: …" is set. Needs a Mac (pkgbuild, productbuild).
# untested on Linux CI; run on a Mac (CI only checks it with `bash -n` and ShellCheck).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(uname -s)" != "Darwin" ]; then
  echo "build-pkg.sh: this needs pkgbuild and productbuild: run it on a Mac" >&2
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

# macOS's bash 3.2 treats an empty "${array[@]}" as unbound under `set -u`: hence the +.
sign=()
if [ -n "${SIGN_IDENTITY:-}" ]; then
  sign=(--sign "$SIGN_IDENTITY")
fi
productbuild --package "$work/leafd-component.pkg" ${sign[@]+"${sign[@]}"} "target/leafd-$version.pkg"
echo "built target/leafd-$version.pkg"
