//! A WebSocket client of the hub that prints every message it receives, sends a text `ping`
//! every 30 seconds like the API document's example, and reports the close code.

use std::time::Duration;

use clap::Parser;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// Prints what a vwed-hub endpoint sends.
#[derive(Parser)]
struct Args {
    /// The endpoint URL, e.g. ws://localhost:8000/ws/storage-location/scene-1?interval=3
    #[arg(default_value = "ws://localhost:8000/ws/task-execution-broadcast/task-1")]
    url: String,
    /// Ask for the current state right after connecting.
    #[arg(long)]
    get_status: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (mut socket, _) = tokio_tungstenite::connect_async(&args.url).await?;
    eprintln!("connected to {}", args.url);
    if args.get_status {
        socket
            .send(Message::text(r#"{"type":"get_status"}"#))
            .await?;
    }
    let mut heartbeat = tokio::time::interval(Duration::from_secs(30));
    heartbeat.tick().await;
    loop {
        tokio::select! {
            _ = heartbeat.tick() => socket.send(Message::text("ping")).await?,
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) => println!("{text}"),
                Some(Ok(Message::Close(frame))) => {
                    match frame {
                        Some(frame) => eprintln!("closed: {} {}", u16::from(frame.code), frame.reason),
                        None => eprintln!("closed"),
                    }
                    return Ok(());
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error.into()),
                None => return Ok(()),
            },
        }
    }
}
