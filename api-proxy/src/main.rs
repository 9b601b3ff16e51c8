//! api-proxy process: telemetry, settings from the environment, run until SIGTERM.

// Every proxied call allocates and frees small buffers on the worker threads; mimalloc's
// per-thread free lists make that measurably cheaper than glibc's (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    shared::http::run_service("api-proxy", api_proxy::Settings::from_env, |settings| async {
        let app = api_proxy::Application::build(settings).await?;
        shared::http::stop_on_signal(|| app.stop()).await;
        Ok(())
    })
}
