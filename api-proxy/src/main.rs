//! api-proxy process: telemetry, settings from the environment, run until SIGTERM.

fn main() -> anyhow::Result<()> {
    shared::http::run_service("api-proxy", api_proxy::Settings::from_env, |settings| async {
        api_proxy::Application::build(settings).await?.run_until_stopped().await;
        Ok(())
    })
}
