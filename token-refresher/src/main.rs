//! token-refresher process: telemetry, settings from the environment, run until SIGTERM.

fn main() -> anyhow::Result<()> {
    shared::http::run_service("token-refresher", token_refresher::Settings::from_env, |settings| async {
        let app = token_refresher::Application::build(settings).await?;
        shared::http::stop_on_signal(|| app.stop()).await;
        Ok(())
    })
}
