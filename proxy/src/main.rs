//! The `kaname` binary: the command line of the `kaname` library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

// The allocator: jemalloc, its background threads on (proxy/Cargo.toml), so
// that pages an attack freed go back to the system after dirty_decay_ms
// (10 s) even while kaname idles; glibc and mimalloc kept them
// (bench/README.md "Memory given back", docs/reliability.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    kaname::cli::main()
}
