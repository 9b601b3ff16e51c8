//! api-proxy process: telemetry, settings, run until SIGTERM.

fn main() -> anyhow::Result<()> {
    let _telemetry = shared::telemetry::init("api-proxy");
    let settings = match api_proxy::Settings::from_env(&shared::config::Env::from_process()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("api-proxy: {e}");
            std::process::exit(2);
        }
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let app = api_proxy::Application::build(settings).await?;
        app.run_until_stopped().await;
        Ok(())
    })
}
