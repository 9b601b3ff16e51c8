//! auth-gateway process: telemetry, settings, run until SIGTERM.

fn main() -> anyhow::Result<()> {
    let _telemetry = shared::telemetry::init("auth-gateway");
    let settings = match auth_gateway::Settings::from_env(&shared::config::Env::from_process()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("auth-gateway: {e}");
            std::process::exit(2);
        }
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let app = auth_gateway::Application::build(settings).await?;
        app.run_until_stopped().await;
        Ok(())
    })
}
