//! `authbridge-dev`: what `authbridge dev` runs (see `devstack::dev`), as a binary of its own
//! for `cargo run -p devstack` and the benchmarks.

fn main() -> anyhow::Result<()> {
    let _telemetry = shared::telemetry::init("authbridge-dev");
    devstack::dev::run()
}
