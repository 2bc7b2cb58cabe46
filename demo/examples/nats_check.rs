//! TEMPORARY integration check (deleted after use).
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::StreamExt;
use vwed_publisher::wire::parse_keyed;
use vwed_publisher::*;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args().nth(1).unwrap();
    let secs: u64 = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(10);
    let client = async_nats::connect(&url).await?;
    let subjects = Subjects::default();
    let mut events = client.subscribe("vwed.>").await?;
    client.flush().await?;

    // Wait for a task id.
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut last_rev: HashMap<String, u64> = HashMap::new();
    let mut task_id = None;
    let mut buffered = Vec::new();
    while task_id.is_none() {
        let m = events.next().await.unwrap();
        if m.subject.starts_with("vwed.task.") {
            let key = m.subject.split('.').nth(2).unwrap().to_owned();
            let e: TaskEvent = parse_keyed(&m.payload, &decode_key(&key).unwrap()).unwrap();
            task_id = Some(e.task_record_id.clone());
        }
        buffered.push(m);
    }
    let task_id = task_id.unwrap();
    let scene_id = "warehouse-north".to_owned();

    let req = |subject: String| {
        let client = client.clone();
        async move { client.request(subject, "".into()).await.unwrap().payload }
    };
    let s0: SceneSnapshot = match SnapshotReply::from_json(&req(subjects.scene_snapshot(&scene_id)).await)? {
        SnapshotReply::Found(s) => s,
        _ => panic!("scene not found"),
    };
    let t0: TaskSnapshot = match SnapshotReply::from_json(&req(subjects.task_snapshot(&task_id)).await)? {
        SnapshotReply::Found(s) => s,
        _ => panic!("task not found"),
    };
    println!("scene {scene_id} rev {} with {} locations; task {task_id} rev {} with {} results",
        s0.rev, s0.storage_locations.len(), t0.rev, t0.results.len());
    let mut scene: BTreeMap<String, StorageLocation> =
        s0.storage_locations.into_iter().map(|l| (l.id.clone(), l)).collect();
    let mut scene_rev = s0.rev;
    let mut task = t0.results;
    let mut task_rev = t0.rev;
    let mut applied = (0, 0);

    let mut apply = |m: &async_nats::Message, limit_scene: u64, limit_task: u64,
                     scene: &mut BTreeMap<String, StorageLocation>, scene_rev: &mut u64,
                     task: &mut Vec<TaskResult>, task_rev: &mut u64,
                     kinds: &mut BTreeMap<String, usize>, last_rev: &mut HashMap<String, u64>,
                     count: bool| {
        let key = decode_key(m.subject.split('.').nth(2).unwrap()).unwrap();
        if m.subject.starts_with("vwed.scene.") {
            let e: SceneEvent = parse_keyed(&m.payload, &key).unwrap();
            if count {
                let kind = match &e.change { SceneChange::StatusChange { action, .. } => format!("scene {action}"), SceneChange::Upsert { storage_locations } => format!("scene upsert({})", if storage_locations.len() > 2 {"many"} else {"few"}), SceneChange::Remove { .. } => "scene remove".into() };
                *kinds.entry(kind).or_default() += 1;
                let prev = last_rev.insert(key.clone(), e.rev).unwrap_or(0);
                assert!(e.rev > prev, "out of order on {key}: {prev} then {}", e.rev);
            }
            if key == scene_id && e.rev > *scene_rev && e.rev <= limit_scene {
                match e.change {
                    SceneChange::StatusChange { new_status, layer_name, .. } => {
                        let l = scene.get_mut(&new_status.id).expect("known id");
                        assert_eq!(l.layer_name, layer_name);
                        l.apply_status(&new_status);
                    }
                    SceneChange::Upsert { storage_locations } => for l in storage_locations { scene.insert(l.id.clone(), l); },
                    SceneChange::Remove { ids } => for id in ids { scene.remove(&id); },
                }
                *scene_rev = e.rev;
                applied.0 += 1;
            }
        } else if m.subject.starts_with("vwed.task.") {
            let e: TaskEvent = parse_keyed(&m.payload, &key).unwrap();
            if count {
                let st = e.change.results().last().map(|r| format!("{:?}", r.status)).unwrap_or_default();
                *kinds.entry(format!("task append {st}")).or_default() += 1;
                let prev = last_rev.insert(key.clone(), e.rev).unwrap_or(0);
                assert!(e.rev > prev, "out of order on {key}");
            }
            if key == task_id && e.rev > *task_rev && e.rev <= limit_task {
                match e.change {
                    TaskChange::Append { index, results } => {
                        assert!(index as usize <= task.len(), "gap");
                        task.truncate(index as usize);
                        task.extend(results);
                    }
                    TaskChange::Replace { results } => *task = results,
                }
                *task_rev = e.rev;
                applied.1 += 1;
            }
        }
    };
    for m in &buffered {
        apply(m, u64::MAX, u64::MAX, &mut scene, &mut scene_rev, &mut task, &mut task_rev, &mut kinds, &mut last_rev, true);
    }
    let until = Instant::now() + Duration::from_secs(secs);
    while let Ok(Some(m)) = tokio::time::timeout_at(until.into(), events.next()).await {
        apply(&m, u64::MAX, u64::MAX, &mut scene, &mut scene_rev, &mut task, &mut task_rev, &mut kinds, &mut last_rev, true);
    }
    // Second snapshots; then drain events that are at or below their revs.
    let s1: SceneSnapshot = match SnapshotReply::from_json(&req(subjects.scene_snapshot(&scene_id)).await)? { SnapshotReply::Found(s) => s, _ => panic!() };
    let t1 = SnapshotReply::<TaskSnapshot>::from_json(&req(subjects.task_snapshot(&task_id)).await)?;
    let t1_rev = match &t1 { SnapshotReply::Found(t) => t.rev, _ => u64::MAX };
    let until = Instant::now() + Duration::from_millis(500);
    while let Ok(Some(m)) = tokio::time::timeout_at(until.into(), events.next()).await {
        apply(&m, s1.rev, t1_rev, &mut scene, &mut scene_rev, &mut task, &mut task_rev, &mut kinds, &mut last_rev, true);
    }
    println!("applied {} scene and {} task events", applied.0, applied.1);
    assert_eq!(scene_rev, s1.rev, "rebuilt scene ends at the snapshot's rev");
    let s1_map: BTreeMap<String, StorageLocation> = s1.storage_locations.iter().map(|l| (l.id.clone(), l.clone())).collect();
    let diffs = scene.iter().filter(|(id, l)| s1_map.get(*id) != Some(l)).count();
    assert_eq!(diffs, 0, "rebuilt scene equals the later snapshot");
    assert_eq!(scene.len(), s1_map.len());
    match t1 {
        SnapshotReply::Found(t) => {
            assert_eq!(task_rev, t.rev);
            assert_eq!(task, t.results);
            println!("task {task_id}: {} results, last {:?}", task.len(), task.last().map(|r| (&r.context, r.status)));
            for r in &task { println!("   {} {:?} {}", r.created_at, r.status, r.context); }
        }
        SnapshotReply::NotFound => println!("task {task_id} was forgotten"),
    }
    // Locked cells link to tasks that exist.
    for l in s1.storage_locations.iter().filter(|l| l.locked_by.as_deref().is_some_and(|h| h.starts_with("TR-"))) {
        let holder = l.locked_by.clone().unwrap();
        let found = SnapshotReply::<TaskSnapshot>::from_json(&req(subjects.task_snapshot(&holder)).await)?;
        assert!(matches!(found, SnapshotReply::Found(_)), "{holder}");
        println!("  {} locked by {holder} (task found)", l.layer_name);
    }
    println!("events seen by kind: {kinds:#?}");
    println!("CHECK OK");
    Ok(())
}
