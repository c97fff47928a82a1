#!/usr/bin/env bash
# Builds a universal (Apple silicon + Intel) leafd into target/universal/leafd and checks that
# it runs. Needs a Mac (Xcode's lipo, the macOS SDK) and refuses to run elsewhere.
# untested on Linux CI; run on a Mac (CI only checks it with `bash -n` and ShellCheck).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(uname -s)" != "Darwin" ]; then
  echo "build-universal.sh: this builds macOS binaries with Xcode's lipo: run it on a Mac" >&2
  exit 1
fi

targets=(aarch64-apple-darwin x86_64-apple-darwin)
rustup target add "${targets[@]}"
for t in "${targets[@]}"; do
  cargo build --release --locked --target "$t"
done

mkdir -p target/universal
lipo -create -output target/universal/leafd \
  target/aarch64-apple-darwin/release/leafd \
  target/x86_64-apple-darwin/release/leafd
lipo target/universal/leafd -verify_arch arm64 x86_64
target/universal/leafd --version
echo "built target/universal/leafd ($(lipo -archs target/universal/leafd))"
