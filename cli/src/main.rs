//! `authbridge`: see the crate's library for the commands.

// `authbridge proxy` runs the proxy in this process: the same allocator as its own binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    use clap::Parser;
    let cli = authbridge::Cli::parse();
    std::process::ExitCode::from(authbridge::run(cli))
}
