#!/usr/bin/env bash
# Builds a universal (Apple silicon + Intel) leafd into target/universal/leafd.
# Runs on a Mac only (it needs Xcode's lipo and the macOS SDK); untested on Linux CI, where it
# is only checked with `bash -n` and ShellCheck.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(uname -s)" != "Darwin" ]; then
  echo "build-universal.sh: run this on a Mac (it needs Xcode's lipo and the macOS SDK)" >&2
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
lipo -info target/universal/leafd
target/universal/leafd --version
