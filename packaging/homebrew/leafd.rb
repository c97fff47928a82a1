# Homebrew formula for leafd: builds from source, and runs the agent at login like
# `leafd install` does (`brew services start leafd`).
#
# At release, set `url` to the release tarball and `sha256` to its checksum
# (`shasum -a 256 leafd-X.Y.Z.tar.gz`). Untested on this project's Linux CI: run on a Mac with
# `brew install --build-from-source ./packaging/homebrew/leafd.rb`.
class Leafd < Formula
  desc "VMware linked clones as easy as making a folder"
  homepage "https://github.com/leafd/leafd"
  url "https://github.com/leafd/leafd/archive/refs/tags/v0.1.0.tar.gz"
  sha256 "0000000000000000000000000000000000000000000000000000000000000000" # fill in at release
  license "MIT"
  head "https://github.com/leafd/leafd.git", branch: "main"

  depends_on "rust" => :build
  depends_on :macos

  def install
    system "cargo", "install", *std_cargo_args
    pkgshare.install "launchd/org.leafd.agent.plist"
  end

  # The same service as `leafd install`: started at login, restarted when it fails but not
  # after a clean exit, in the background with low-priority I/O.
  service do
    run [opt_bin/"leafd", "agent"]
    run_at_load true
    keep_alive successful_exit: false
    process_type :background
    throttle_interval 30
    log_path var/"log/leafd/agent.stdout.log"
    error_log_path var/"log/leafd/agent.stderr.log"
  end

  test do
    assert_match "leafd", shell_output("#{bin}/leafd --version")
    (testpath/"lib").mkpath
    assert_match "no bases yet", shell_output("#{bin}/leafd --root #{testpath}/lib status")
  end
end
