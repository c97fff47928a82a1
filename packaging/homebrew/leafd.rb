# Homebrew formula for leafd: builds from source, and `brew services start leafd` runs the agent
# at login exactly as `leafd install` does (use one or the other: only one agent can watch a
# library).
#
# At release: set `url` to the release tarball, `sha256` to its checksum
# (`shasum -a 256 leafd-X.Y.Z.tar.gz`) and `homepage` to the project's page. Untested on Linux
# CI; run on a Mac:
#   brew install --build-from-source ./packaging/homebrew/leafd.rb && brew test leafd
class Leafd < Formula
  desc "VMware linked clones as easy as making a folder"
  homepage "https://example.invalid/leafd" # FILL IN AT RELEASE
  url "https://example.invalid/leafd/leafd-0.1.0.tar.gz" # FILL IN AT RELEASE
  sha256 "0000000000000000000000000000000000000000000000000000000000000000" # FILL IN AT RELEASE
  license any_of: ["MIT", "Apache-2.0"]

  depends_on "rust" => :build

  def install
    system "cargo", "install", *std_cargo_args
    pkgshare.install "launchd/org.leafd.agent.plist"
    # `leafd completions bash|zsh|fish` and `leafd man DIR` (a page per command).
    generate_completions_from_executable(bin/"leafd", "completions", shells: [:bash, :zsh, :fish])
    system bin/"leafd", "man", man1
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

  def caveats
    <<~EOS
      Start the agent at login with either `brew services start leafd` or `leafd install`,
      not both: only one agent can watch a library. Its log: `leafd log`.
    EOS
  end

  test do
    assert_match version.to_s, shell_output("#{bin}/leafd --version")
    assert_match "remove-base", shell_output("#{bin}/leafd completions bash")
    assert_predicate man1/"leafd-remove-base.1", :exist?
    (testpath/"lib").mkpath
    assert_match "no bases yet", shell_output("#{bin}/leafd --root #{testpath}/lib status")
  end
end
