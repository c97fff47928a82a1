//! The `leafd` program: the library's command line.

// The package's dependencies are the library's; this file only calls it.
#![allow(unused_crate_dependencies)]

fn main() -> std::process::ExitCode {
    leafd::main()
}
