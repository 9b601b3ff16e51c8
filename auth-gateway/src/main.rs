//! auth-gateway process: telemetry, settings from the environment, run until SIGTERM.

fn main() -> anyhow::Result<()> {
    shared::http::run_service("auth-gateway", auth_gateway::Settings::from_env, |settings| async {
        let app = auth_gateway::Application::build(settings).await?;
        shared::http::stop_on_signal(|| app.stop()).await;
        Ok(())
    })
}
