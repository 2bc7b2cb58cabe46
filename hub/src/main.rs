use clap::Parser;
use vwed_hub::HubConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    vwed_hub::process::run(HubConfig::parse()).await
}
