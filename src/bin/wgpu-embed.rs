//! `wgpu-embed`: run conformance case files on this machine's GPU (see `src/cli/`).

fn main() -> std::process::ExitCode {
    wgpu_embed::cli::main()
}
