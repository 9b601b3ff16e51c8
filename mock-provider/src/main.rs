//! The mock provider as a process: the demo provider of `docker compose --profile demo`.

fn main() -> std::io::Result<()> {
    let _telemetry = shared::telemetry::init("mock-provider");
    let settings = mock_provider::Settings::from_env();
    tokio::runtime::Runtime::new()?.block_on(async {
        let server = mock_provider::run(settings).await?;
        tracing::info!(url = %server.url(), "mock provider listening");
        shared::http::shutdown_signal().await;
        server.stop().await;
        Ok(())
    })
}
