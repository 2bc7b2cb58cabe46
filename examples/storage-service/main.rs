//! A simulated storage service: one scene of storage locations whose status changes a few
//! times per second (occupy, release, lock, unlock, disable, enable, empty tray), published as
//! status changes, with snapshots answered from the same in-memory state.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::sync::Mutex;
use vwed_publisher::{
    timestamp_now, Publisher, SceneChange, SceneEvent, SceneSnapshot, StatusAction, StorageLocation,
};

/// Publishes simulated storage-location changes to NATS for vwed-hub.
#[derive(Parser)]
struct Args {
    /// NATS server to publish to.
    #[arg(long, env = "VWED_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Subject prefix; must match the hub's.
    #[arg(long, env = "VWED_SUBJECT_PREFIX", default_value = "vwed")]
    subject_prefix: String,
    /// The scene to simulate.
    #[arg(long, default_value = "scene-1")]
    scene: String,
    /// Milliseconds between changes.
    #[arg(long, default_value_t = 400)]
    every_ms: u64,
}

/// The scene's rev and locations, changed and read under one lock.
type Scene = Arc<Mutex<(u64, Vec<StorageLocation>)>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().init();
    let args = Args::parse();
    let client = async_nats::connect(&args.nats_url).await?;
    let publisher = Publisher::new(client).with_prefix(&args.subject_prefix);
    let scene: Scene = Arc::new(Mutex::new((publisher.next_rev(), warehouse(&args.scene))));

    let (state, scene_id) = (scene.clone(), args.scene.clone());
    let _responder = publisher
        .serve_scene_snapshots(move |id: String| {
            let (state, scene_id) = (state.clone(), scene_id.clone());
            async move {
                let scene = state.lock().await;
                Ok::<_, std::convert::Infallible>((id == scene_id).then(|| SceneSnapshot {
                    scene_id: id,
                    rev: scene.0,
                    storage_locations: scene.1.clone(),
                }))
            }
        })
        .await?;
    tracing::info!(scene = %args.scene, "storage service running; watch it at ws://localhost:8000/ws/storage-location/{}", args.scene);

    loop {
        tokio::time::sleep(Duration::from_millis(args.every_ms)).await;
        if let Err(error) = change_one(&publisher, &scene, &args.scene).await {
            tracing::warn!(%error, "could not publish");
        }
    }
}

/// Two areas, eight stations, four layers each.
fn warehouse(scene: &str) -> Vec<StorageLocation> {
    let mut locations = Vec::new();
    for (area, stations) in [("A1", 1..=4), ("A2", 5..=8)] {
        for station in stations {
            for layer in 1..=4 {
                let station_name = format!("ST{station}");
                let now = timestamp_now();
                locations.push(StorageLocation {
                    layer_name: format!("{station_name}-L{layer}"),
                    operate_point_id: Some(format!("AP{station}")),
                    storage_location_name: Some(format!("库位{station}-{layer}")),
                    area_name: Some(format!("{area}库区")),
                    is_occupied: fastrand::bool(),
                    goods_content: Some(String::new()),
                    last_access_at: Some(now.clone()),
                    max_weight: Some(5000),
                    max_volume: Some(1000),
                    layer_height: Some(100),
                    tags: Some(String::new()),
                    created_at: Some(now.clone()),
                    updated_at: Some(now),
                    ..StorageLocation::new(
                        scene,
                        format!("{scene}-{station_name}-{layer}"),
                        area,
                        station_name,
                        layer,
                    )
                });
            }
        }
    }
    locations
}

/// Changes one random location and publishes the change with the rev stored beside the state.
async fn change_one(
    publisher: &Publisher,
    scene: &Scene,
    scene_id: &str,
) -> Result<(), vwed_publisher::Error> {
    let mut scene = scene.lock().await;
    let index = fastrand::usize(..scene.1.len());
    let location = &mut scene.1[index];
    let action = match fastrand::u8(0..7) {
        0 => {
            location.is_occupied = true;
            location.goods_content = Some("纸箱".into());
            StatusAction::Occupy
        }
        1 => {
            location.is_occupied = false;
            location.goods_content = Some(String::new());
            StatusAction::Release
        }
        2 => {
            location.is_locked = true;
            location.locked_by = Some("agv-1".into());
            StatusAction::Lock
        }
        3 => {
            location.is_locked = false;
            location.locked_by = None;
            StatusAction::Unlock
        }
        4 => {
            location.is_disabled = true;
            StatusAction::Disable
        }
        5 => {
            location.is_disabled = false;
            StatusAction::Enable
        }
        _ => {
            location.is_empty_tray = !location.is_empty_tray;
            if location.is_empty_tray {
                StatusAction::SetEmptyTray
            } else {
                StatusAction::ClearEmptyTray
            }
        }
    };
    let now = timestamp_now();
    location.last_access_at = Some(now.clone());
    location.updated_at = Some(now.clone());
    let event = SceneEvent {
        scene_id: scene_id.to_owned(),
        rev: publisher.next_rev(),
        prev_rev: None,
        change: SceneChange::StatusChange {
            layer_name: location.layer_name.clone(),
            action,
            timestamp: now,
            new_status: location.status(),
        },
    };
    scene.0 = event.rev;
    publisher.publish_scene(&event).await
}
