//! token-refresher process: telemetry, settings, run until SIGTERM.

fn main() -> anyhow::Result<()> {
    let _telemetry = shared::telemetry::init("token-refresher");
    let settings = match token_refresher::Settings::from_env(&shared::config::Env::from_process()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("token-refresher: {e}");
            std::process::exit(2);
        }
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let app = token_refresher::Application::build(settings).await?;
        app.run_until_stopped().await;
        Ok(())
    })
}
