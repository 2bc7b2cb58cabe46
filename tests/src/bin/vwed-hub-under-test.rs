//! The hub binary, built inside this crate so that tests can run it as a process of its own
//! (`env!("CARGO_BIN_EXE_vwed-hub-under-test")`) and kill it: the same code as `vwed-hub`.

use clap::Parser;
use vwed_hub::HubConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    vwed_hub::process::run(HubConfig::parse()).await
}
