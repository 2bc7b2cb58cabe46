//! vwed-bench: the load generator of vwed-hub. See `vwed-bench --help` and bench/README.md.

mod churn;
mod cli;
mod client;
mod owner;
mod pool;
mod procfs;
mod report;
mod scenarios;
mod stamp;
mod target;
mod worker;

use clap::Parser;

use cli::{Cli, Scenario};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Scenario::Fanout(args) => scenarios::fanout(args).await,
            Scenario::ManyKeys(args) => scenarios::many_keys(args).await,
            Scenario::Idle(args) => scenarios::idle(args).await,
            Scenario::Storage(args) => scenarios::storage(args).await,
            Scenario::ConnectStorm(args) => scenarios::connect_storm(args).await,
            Scenario::SlowClient(args) => scenarios::slow_client(args).await,
            Scenario::Compare(args) => scenarios::compare(args).await,
            Scenario::Churn(args) => churn::churn(args).await,
            Scenario::Worker => worker::run().await,
            Scenario::Hub(config) => vwed_hub::process::run(*config).await,
        }
    })
}
