//! The faults of production, on loopback: three hub processes on a three-node NATS cluster,
//! monitoring panels spread over the hubs (reconnecting as the page does), and an owner that
//! keeps publishing. Whatever fails, every panel ends with exactly the owner's state: the tests
//! stop the publishing, then compare what each panel holds with what the owner would answer to
//! a snapshot, and count what was lost. It must be nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use vwed_e2e::cluster::{converge, wait_until, HUB_CONNECTION, NODES, OWNER_CONNECTION};
use vwed_e2e::{
    location, Backoff, Client, Ending, Endpoint, HubProcess, NatsCluster, Owner, Panel, Panelled,
    Traffic, PATIENCE,
};
use vwed_publisher::{StatusAction, TaskResult, TaskStatus};

/// The hub binary, built in this crate (the same code as `vwed-hub`).
const HUB_BINARY: &str = env!("CARGO_BIN_EXE_vwed-hub-under-test");

/// Hub replicas in every test.
const HUBS: usize = 3;

/// The tasks and scenes the owner publishes.
const TASKS: [&str; 3] = ["t-0", "t-1", "t-2"];
const SCENES: [&str; 2] = ["s-0", "s-1"];

/// Storage locations per scene.
const LOCATIONS: usize = 6;

/// The owner's pace: one task result and one location status per step.
const STEP: Duration = Duration::from_millis(50);

/// Changes published after a fault, so that the owner keeps publishing across it and every
/// task and location changes again (2 changes a step: 20 steps touch each location at least
/// once more).
const AFTER_FAULT: u64 = 40;

/// How long panels get to end with the owner's state once publishing stops: a reconnect with
/// backoff, a snapshot and a realtime interval, with room for a loaded machine.
const CONVERGE_WITHIN: Duration = Duration::from_secs(20);

/// How long waits that span a fault and its repair may take on a loaded machine: the owner
/// publishes slowly while NATS is down (each publish waits for a flush that times out).
const FAULT_PATIENCE: Duration = Duration::from_secs(30);

/// Which panels watch what, on which hub: every endpoint on every hub, keys shared across hubs.
fn spread_panels() -> Vec<(usize, Endpoint, &'static str)> {
    (0..HUBS)
        .flat_map(|hub| {
            [
                (hub, Endpoint::TaskRealtime, TASKS[hub % TASKS.len()]),
                (hub, Endpoint::TaskBroadcast, TASKS[(hub + 1) % TASKS.len()]),
                (hub, Endpoint::SceneRealtime, SCENES[hub % SCENES.len()]),
                (
                    hub,
                    Endpoint::SceneBroadcast,
                    SCENES[(hub + 1) % SCENES.len()],
                ),
            ]
        })
        .collect()
}

/// Where everything connects.
struct Layout {
    /// The NATS nodes each hub is given (`--nats-url`), by hub.
    hub_nodes: [Vec<usize>; HUBS],
    /// The nodes the owner connects to, in order; empty: the node most hubs are on first, so
    /// that losing the owner's node makes hubs fail over too.
    owner_nodes: Vec<usize>,
    /// Flags every hub gets besides the defaults.
    hub_args: Vec<String>,
    /// The panels: hub, endpoint, key.
    panels: Vec<(usize, Endpoint, &'static str)>,
}

impl Layout {
    /// Every hub knows every node; panels spread over all hubs.
    fn spread() -> Self {
        let all: Vec<usize> = (0..NODES).collect();
        Self {
            hub_nodes: [all.clone(), all.clone(), all],
            owner_nodes: Vec::new(),
            hub_args: Vec::new(),
            panels: spread_panels(),
        }
    }
}

/// A cluster, its hubs, the owner and the panels. Fields drop in order, so a test tears down
/// from the clients inwards: the hubs' logs end with their clients leaving, not with NATS gone.
struct World {
    /// Names the test in logs and messages.
    label: &'static str,
    /// The owner's publishing, while it runs.
    traffic: Option<Traffic>,
    /// The monitoring panels.
    panels: Vec<Panel>,
    /// The hub processes, by index (panels name hubs by it).
    hubs: Vec<HubProcess>,
    /// The owner of every task and scene; shared with its publishing loop.
    owner: Arc<Owner>,
    /// The node the owner connected to first.
    owner_node: usize,
    /// The three NATS nodes.
    nats: NatsCluster,
}

impl World {
    /// Starts the cluster and the hubs, seeds the owner, opens the panels and waits until each
    /// holds its first state.
    async fn start(label: &'static str, layout: Layout) -> Self {
        vwed_e2e::init_logging();
        let nats = NatsCluster::start(label).await;
        let hubs = futures::future::join_all((0..HUBS).map(|hub| {
            let urls = nats.urls(&layout.hub_nodes[hub]);
            let args = &layout.hub_args;
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                HubProcess::start(HUB_BINARY, &format!("{label}-hub-{hub}"), &urls, &args).await
            }
        }))
        .await;

        let owner_nodes = if layout.owner_nodes.is_empty() {
            busiest_first(&nats).await
        } else {
            layout.owner_nodes
        };
        let owner = Arc::new(nats.owner(&owner_nodes).await);
        nats.wait_for_connections(owner_nodes[0], OWNER_CONNECTION, 1)
            .await;
        for task in TASKS {
            owner
                .seed_task(
                    task,
                    vec![TaskResult::now("[start] 0", TaskStatus::Running)],
                )
                .await;
        }
        for scene in SCENES {
            owner.seed_scene(scene, scene_locations(scene)).await;
        }

        let bases: Vec<String> = hubs.iter().map(HubProcess::ws_base).collect();
        let panels: Vec<Panel> = layout
            .panels
            .iter()
            .map(|&(hub, endpoint, key)| {
                Panel::open(bases.clone(), hub, endpoint, key, Backoff::default())
            })
            .collect();
        // Realtime panels get the state on connect; broadcast ones only once they ask.
        wait_until("every panel is connected", PATIENCE, || async {
            panels.iter().all(|p| {
                let log = p.log();
                log.connected_to.is_some() && (p.endpoint.is_broadcast() || log.states >= 1)
            })
        })
        .await;
        Self {
            label,
            nats,
            hubs,
            owner_node: owner_nodes[0],
            owner,
            panels,
            traffic: None,
        }
    }

    /// Starts the owner's steady publishing and waits until every panel has seen it.
    async fn start_traffic(&mut self) {
        let scenes = SCENES
            .iter()
            .map(|scene| {
                let ids = (0..LOCATIONS).map(|i| location_id(scene, i)).collect();
                (scene.to_string(), ids)
            })
            .collect();
        let tasks = TASKS.iter().map(|t| t.to_string()).collect();
        self.traffic = Some(Traffic::start(self.owner.clone(), tasks, scenes, STEP));
        let panels = &self.panels;
        wait_until(
            "every panel has seen the owner's changes",
            PATIENCE,
            || async {
                panels
                    .iter()
                    .all(|p| p.log().states >= 2 || changes_seen(p) >= 1)
            },
        )
        .await;
    }

    /// Waits until the owner has published [`AFTER_FAULT`] more changes.
    /// Waits until every panel in `moved` is on a hub other than `victim`, lets the owner
    /// publish a while longer, then stops it and waits for the last states.
    async fn settle_off(&mut self, victim: usize, moved: &[usize]) {
        let panels = &self.panels;
        wait_until(
            "the panels of the hub that went away are connected to other hubs",
            FAULT_PATIENCE,
            || async {
                moved
                    .iter()
                    .all(|&i| panels[i].hub().is_some_and(|hub| hub != victim))
            },
        )
        .await;
        self.keep_publishing().await;
        self.finish().await;
    }

    /// Asserts that each panel in `moved` ended exactly as `expected` says, and that no other
    /// panel was disconnected at all.
    fn assert_endings(&self, moved: &[usize], expected: &[Ending], where_: &str) {
        for (i, panel) in self.panels.iter().enumerate() {
            let log = panel.log();
            if moved.contains(&i) {
                assert_eq!(log.endings, expected, "{} {where_}", panel.label());
            } else {
                assert!(
                    log.endings.is_empty(),
                    "{} on a live hub was disconnected: {:?}",
                    panel.label(),
                    log.endings
                );
            }
        }
    }

    async fn keep_publishing(&self) {
        self.traffic
            .as_ref()
            .expect("the owner is publishing")
            .wait_for(AFTER_FAULT, FAULT_PATIENCE)
            .await;
    }

    /// The panels whose socket is open to `hub` now.
    fn panels_on(&self, hub: usize) -> Vec<usize> {
        (0..self.panels.len())
            .filter(|&i| self.panels[i].hub() == Some(hub))
            .collect()
    }

    /// Stops the publishing, then checks that every panel ends with exactly the owner's
    /// state; reports and asserts what was lost.
    async fn finish(&mut self) {
        let published = match self.traffic.take() {
            Some(traffic) => format!("{} changes published throughout", traffic.stop().await),
            None => "no steady publishing".to_owned(),
        };
        let lost = converge(&self.owner, &self.panels, CONVERGE_WITHIN).await;
        eprintln!(
            "{}: {published}; {} panels, {} lost",
            self.label,
            self.panels.len(),
            lost.len()
        );
        assert!(
            lost.is_empty(),
            "{}: {} of {} panels did not end with the owner's state:\n{}",
            self.label,
            lost.len(),
            self.panels.len(),
            lost.join("\n")
        );
    }

    /// Asserts that no panel's socket ended: one socket each, open all along.
    fn assert_nobody_disconnected(&self) {
        for panel in &self.panels {
            let log = panel.log();
            assert!(
                log.endings.is_empty() && log.sockets.len() == 1,
                "{}: {} was disconnected: sockets on hubs {:?}, endings {:?}",
                self.label,
                panel.label(),
                log.sockets,
                log.endings
            );
        }
    }

    /// The value of `metric` on every hub.
    async fn metric_on_each(&self, metric: &str) -> Vec<f64> {
        let mut values = Vec::new();
        for hub in &self.hubs {
            values.push(hub.metric(metric).await);
        }
        values
    }
}

/// The owner's locations of `scene`: two layers on each of three stations.
fn scene_locations(scene: &str) -> Vec<vwed_publisher::StorageLocation> {
    (0..LOCATIONS)
        .map(|i| {
            location(
                scene,
                &location_id(scene, i),
                "A1",
                &format!("S{}", i / 2 + 1),
                (i % 2) as i64 + 1,
            )
        })
        .collect()
}

fn location_id(scene: &str, i: usize) -> String {
    format!("{scene}-l{i}")
}

/// Change messages a broadcast panel got (its state messages are answers or upserts).
fn changes_seen(panel: &Panel) -> u64 {
    let log = panel.log();
    match panel.endpoint {
        Endpoint::TaskBroadcast => log.count("task_execution_update"),
        Endpoint::SceneBroadcast => log.count("storage_location_status_change"),
        Endpoint::TaskRealtime | Endpoint::SceneRealtime => 0,
    }
}

/// The nodes, the one with the most hubs connected first (the lowest of equals).
async fn busiest_first(nats: &NatsCluster) -> Vec<usize> {
    let mut hubs_on = Vec::new();
    for node in 0..NODES {
        hubs_on.push(nats.connections_named(node, HUB_CONNECTION).await);
    }
    let mut nodes: Vec<usize> = (0..NODES).collect();
    nodes.sort_by_key(|&node| std::cmp::Reverse(hubs_on[node]));
    nodes
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_hubs_clients_reconnect_elsewhere_and_every_client_ends_with_the_owners_state() {
    let mut world = World::start("kill-a-hub", Layout::spread()).await;
    world.start_traffic().await;
    let victim = 1;
    let moved = world.panels_on(victim);
    assert!(!moved.is_empty(), "hub {victim} serves no panel");

    world.hubs[victim].kill().await;
    world.settle_off(victim, &moved).await;

    // The hub died: no close frame, the connection just dropped.
    world.assert_endings(&moved, &[Ending::Dropped], "on the killed hub");
}

#[tokio::test(flavor = "multi_thread")]
async fn when_a_nats_node_dies_hubs_and_the_owner_fail_over_and_no_client_is_disconnected() {
    let mut world = World::start("kill-a-nats-node", Layout::spread()).await;
    world.start_traffic().await;
    // The owner's node, which also serves the most hubs (at least one of three).
    let victim = world.owner_node;
    let hubs_there = world.nats.connections_named(victim, HUB_CONNECTION).await;
    assert!(hubs_there >= 1, "no hub on node {victim}");
    let connects = "vwed_hub_broker_reconnects_total";
    let before = world.metric_on_each(connects).await;

    world.nats.kill(victim).await;
    let world_ref = &world;
    wait_until(
        "the owner and every hub are connected to the surviving nodes",
        FAULT_PATIENCE,
        || async {
            let mut owner_back = false;
            let mut hubs_connected = 0;
            for node in (0..NODES).filter(|&n| n != victim) {
                owner_back |= world_ref
                    .nats
                    .connections_named(node, OWNER_CONNECTION)
                    .await
                    == 1;
                hubs_connected += world_ref.nats.connections_named(node, HUB_CONNECTION).await;
            }
            let mut ready = true;
            for hub in &world_ref.hubs {
                ready &= hub.is_ready().await;
            }
            owner_back && hubs_connected == HUBS && ready
        },
    )
    .await;
    let after = world.metric_on_each(connects).await;
    let failed_over = before.iter().zip(&after).filter(|(b, a)| a > b).count();
    assert_eq!(
        failed_over, hubs_there,
        "exactly the hubs that were on node {victim} reconnect ({before:?} -> {after:?})"
    );
    world.keep_publishing().await;
    // The node comes back and rejoins the cluster; nobody needs to move back to it.
    world.nats.start_node(victim).await;
    world.keep_publishing().await;
    world.finish().await;
    world.assert_nobody_disconnected();
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_stay_connected_while_every_nats_node_restarts_and_converge() {
    let mut world = World::start("restart-all-nats", Layout::spread()).await;
    world.start_traffic().await;

    world.nats.stop_all().await;
    let hubs = &world.hubs;
    wait_until("every hub says it is not ready", PATIENCE, || async {
        for hub in hubs {
            if hub.is_ready().await {
                return false;
            }
        }
        true
    })
    .await;
    // The owner's state moves on while no event can reach a hub.
    world
        .traffic
        .as_ref()
        .expect("the owner is publishing")
        .wait_for(1, FAULT_PATIENCE)
        .await;

    world.nats.start_all().await;
    let hubs = &world.hubs;
    wait_until("every hub is ready again", FAULT_PATIENCE, || async {
        for hub in hubs {
            if !hub.is_ready().await {
                return false;
            }
        }
        true
    })
    .await;
    world.keep_publishing().await;
    world.finish().await;
    world.assert_nobody_disconnected();
}

/// The SIGTERM test's drain: clients are closed at random moments within `DRAIN_SPREAD`, and
/// the hub exits at `SHUTDOWN_TIMEOUT` at the latest. The limit leaves a second beyond the
/// spread for well-behaved clients to get their close, and is shorter than the 2 s the hub
/// waits for a close reply, so that a client that never replies makes the limit bind.
const DRAIN_SPREAD: Duration = Duration::from_millis(500);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(1500);

/// Time beyond the drain limit a process may take to exit on a loaded machine.
const EXIT_SLACK: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread")]
async fn a_hub_on_sigterm_stops_accepting_closes_its_clients_with_1001_and_exits_within_its_limit()
{
    let layout = Layout {
        hub_args: vec![
            "--drain-spread".into(),
            format!("{}ms", DRAIN_SPREAD.as_millis()),
            "--shutdown-timeout".into(),
            format!("{}ms", SHUTDOWN_TIMEOUT.as_millis()),
        ],
        ..Layout::spread()
    };
    let mut world = World::start("sigterm-a-hub", layout).await;
    world.start_traffic().await;
    let victim = 2;
    let moved = world.panels_on(victim);
    assert!(!moved.is_empty(), "hub {victim} serves no panel");
    // A client that never reads, so never answers its close: the hub would wait for it past
    // the limit, and meanwhile can be seen refusing new connections while it drains.
    let stuck =
        Client::connect_url(&world.hubs[victim].url(&Endpoint::TaskRealtime.path(TASKS[0]))).await;

    let sent = Instant::now();
    world.hubs[victim].terminate().await;
    let addr = world.hubs[victim].addr();
    wait_until(
        "the draining hub refuses new connections",
        PATIENCE,
        || async { TcpStream::connect(addr).await.is_err() },
    )
    .await;
    assert!(
        !world.hubs[victim].has_exited(),
        "the hub exited before it could be seen refusing connections while draining"
    );
    let status = world.hubs[victim]
        .wait_for_exit(SHUTDOWN_TIMEOUT + EXIT_SLACK)
        .await;
    let took = sent.elapsed();
    assert!(status.success(), "the hub exited with {status}");
    assert!(
        took <= SHUTDOWN_TIMEOUT + EXIT_SLACK,
        "the hub took {took:?} to exit"
    );
    // It stopped because of the limit, not because the stuck client let it go.
    let log = std::fs::read_to_string(world.hubs[victim].log()).unwrap_or_default();
    assert!(
        log.contains("some connections did not close in time"),
        "the drain limit did not bind; see {}",
        world.hubs[victim].log().display()
    );
    drop(stuck);

    world.settle_off(victim, &moved).await;
    world.assert_endings(&moved, &[Ending::Closed(1001)], "on the stopped hub");
    eprintln!("sigterm-a-hub: the hub exited {took:?} after SIGTERM");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publisher_on_one_node_reaches_clients_of_hubs_on_the_other_nodes() {
    let layout = Layout {
        hub_nodes: [vec![1], vec![2], vec![1, 2]],
        owner_nodes: vec![0],
        ..Layout::spread()
    };
    let mut world = World::start("publisher-on-another-node", layout).await;
    // Where everyone is: the owner alone on node 0, the hubs on nodes 1 and 2.
    assert_eq!(
        world.nats.client_names(0).await,
        vec![OWNER_CONNECTION.to_owned()]
    );
    let hubs_elsewhere = world.nats.connections_named(1, HUB_CONNECTION).await
        + world.nats.connections_named(2, HUB_CONNECTION).await;
    assert_eq!(hubs_elsewhere, HUBS);

    world.start_traffic().await;
    world.keep_publishing().await;
    world.finish().await;
    world.assert_nobody_disconnected();
}

/// How long after the cluster is whole again, with nothing more published, panels get to hold
/// the owner's state: one tip interval of the SDK (what bounds the staleness of any loss), and
/// a snapshot, a realtime interval and a `get_status` answer on a loaded machine.
const HEAL_WITHIN: Duration =
    Duration::from_secs(vwed_publisher::tips::DEFAULT_TIP_INTERVAL.as_secs() + 4);

/// Core NATS loses what is on its way when a node dies: events the owner had written to it,
/// events it had not yet routed. The owner alone on one node, the hubs on the others, so no
/// hub loses its connection and re-snapshots on its own (after a first failover the owner may
/// share a node with hubs: only hubs that kept their connection count). The owner publishes a
/// burst of status changes as services do (no flush between them), its node is killed as the
/// burst ends, and the owner fails over and publishes a few more. Once the node is back, with
/// nothing more published, every panel holds exactly the owner's state within one tip
/// interval: the tip names the latest rev, which the hubs hold, so what the kill lost was
/// healed by the next events' `prev_rev`. A round in which the kill happened to lose nothing
/// (no connected hub took a snapshot) proves nothing, so the test tries again, up to
/// [`LOSS_ROUNDS`] times.
#[tokio::test(flavor = "multi_thread")]
async fn events_lost_when_the_owners_node_dies_heal_within_one_tip_interval_without_new_changes() {
    let layout = Layout {
        hub_nodes: [vec![1], vec![2], vec![1, 2]],
        owner_nodes: vec![0, 1, 2],
        ..Layout::spread()
    };
    let mut world = World::start("lost-on-a-dying-node", layout).await;
    let reconnects = "vwed_hub_broker_reconnects_total";
    let snapshots = r#"vwed_hub_snapshot_requests_total{kind="scene",reason="found"}"#;
    let mut healed_a_loss = false;
    for round in 1..=LOSS_ROUNDS {
        let reconnects_before = world.metric_on_each(reconnects).await;
        let snapshots_before = world.metric_on_each(snapshots).await;
        // Node 0 at first; after a failover, wherever the owner went.
        let owner_node = owner_node(&world.nats).await;
        // The node dies with the end of the burst on its way; the owner fails over and
        // publishes a few more changes, chained to those.
        status_burst(&world.owner, 0..BURST).await;
        world.nats.kill(owner_node).await;
        status_burst(&world.owner, BURST..BURST + AFTER_THE_KILL).await;
        world.owner.flush().await;
        world.nats.start_node(owner_node).await;

        let lost = converge(&world.owner, &world.panels, HEAL_WITHIN).await;
        // Snapshots of hubs that kept their NATS connection: only a gap or a tip asks for one.
        let reconnected = world.metric_on_each(reconnects).await;
        let healing: Vec<f64> = world
            .metric_on_each(snapshots)
            .await
            .iter()
            .zip(&snapshots_before)
            .zip(reconnected.iter().zip(&reconnects_before))
            .map(|((after, before), (r_after, r_before))| {
                if r_after == r_before {
                    after - before
                } else {
                    0.0
                }
            })
            .collect();
        eprintln!(
            "lost-on-a-dying-node round {round}: node {owner_node} killed during a burst of {BURST}; \
             snapshots of hubs that stayed connected {healing:?}; {} panels off",
            lost.len()
        );
        assert!(
            lost.is_empty(),
            "round {round}: {} of {} panels did not hold the owner's state {HEAL_WITHIN:?} after \
             the cluster healed:\n{}",
            lost.len(),
            world.panels.len(),
            lost.join("\n")
        );
        if healing.iter().any(|&n| n > 0.0) {
            healed_a_loss = true;
            break;
        }
    }
    assert!(
        healed_a_loss,
        "in {LOSS_ROUNDS} rounds no kill lost an event that a connected hub had to heal; the \
         test proved nothing"
    );
    world.assert_nobody_disconnected();
}
/// A store restored from a backup during maintenance, with the whole NATS cluster restarted:
/// one task comes back versioned far below what the hubs hold, and one scene is not in the
/// backup at all. Nothing more is published. Within one tip interval of the cluster being
/// whole, every panel of the task holds the restored state (each hub refuses the older
/// snapshot a few times, then believes it), every panel of the scene got one `error` saying
/// it does not exist and no state since, and no panel was disconnected.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_restored_while_nats_restarts_reaches_every_panel_and_a_vanished_scene_is_told() {
    let mut world = World::start("restored-store", Layout::spread()).await;
    world.start_traffic().await;
    world.keep_publishing().await;
    world.traffic.take().expect("publishing").stop().await;
    let (restored_task, vanished_scene) = (TASKS[0], SCENES[1]);
    let vanished_panels: Vec<usize> = (0..world.panels.len())
        .filter(|&i| world.panels[i].key == vanished_scene)
        .collect();
    assert!(!vanished_panels.is_empty());

    world.nats.stop_all().await;
    world
        .owner
        .restore_task(
            restored_task,
            100,
            vec![TaskResult::now("[backup] 0", TaskStatus::Success)],
        )
        .await;
    world.owner.forget_scene(vanished_scene).await;
    world.nats.start_all().await;
    let states_when_whole: Vec<u64> = world.panels.iter().map(|p| p.log().states).collect();

    let others: Vec<&Panel> = world
        .panels
        .iter()
        .enumerate()
        .filter(|(i, _)| !vanished_panels.contains(i))
        .map(|(_, p)| p)
        .collect();
    let lost = converge(&world.owner, others, HEAL_WITHIN).await;
    assert!(
        lost.is_empty(),
        "{} panels did not hold the owner's state {HEAL_WITHIN:?} after the cluster healed:\n{}",
        lost.len(),
        lost.join("\n")
    );
    let panels = &world.panels;
    wait_until(
        "every panel of the vanished scene is told",
        HEAL_WITHIN,
        || async {
            vanished_panels.iter().all(|&i| {
                panels[i].log().last_error.as_ref().is_some_and(|error| {
                    error["message"] == format!("场景不存在: {vanished_scene}")
                })
            })
        },
    )
    .await;
    // No more pushes of the old state (a realtime interval passes), the sockets stay open.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for &i in &vanished_panels {
        let log = world.panels[i].log();
        assert!(
            log.states <= states_when_whole[i] + 1,
            "{} got states after the scene vanished: {} -> {}",
            world.panels[i].label(),
            states_when_whole[i],
            log.states
        );
    }
    world.assert_nobody_disconnected();
}

/// Status changes in a burst: 25 for each location.
const BURST: u64 = 300;

/// Status changes after the kill: too few to touch every location again, so a location whose
/// last change the kill lost keeps the wrong state unless the hubs heal it.
const AFTER_THE_KILL: u64 = 3;

/// Kills tried before a test that needs a lost event gives up.
const LOSS_ROUNDS: u32 = 4;

/// Publishes status changes number `steps` over every location of every scene as fast as the
/// owner's publisher takes them, as services do: without waiting for NATS between them.
async fn status_burst(owner: &Owner, steps: std::ops::Range<u64>) {
    for step in steps {
        let scene = SCENES[step as usize % SCENES.len()];
        let id = location_id(scene, (step as usize / SCENES.len()) % LOCATIONS);
        let occupy = step % 3 != 0;
        let action = if occupy {
            StatusAction::Occupy
        } else {
            StatusAction::Release
        };
        let event = owner
            .change_status_unpublished(scene, &id, action, |l| {
                l.is_occupied = occupy;
                l.goods_content = Some(format!("burst {step}"));
            })
            .await;
        owner
            .publisher()
            .publish_scene(&event)
            .await
            .expect("the publisher takes the event");
    }
}

/// The node the owner is connected to now.
async fn owner_node(nats: &NatsCluster) -> usize {
    for node in 0..NODES {
        if nats.connections_named(node, OWNER_CONNECTION).await == 1 {
            return node;
        }
    }
    panic!("the owner is connected to no node");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hub_receives_no_nats_traffic_for_keys_its_clients_do_not_watch() {
    // Hub A watches K1 only, hub B K2 only, hub C both; each hub on a node of its own, the
    // owner on hub C's node, so K1's events cross routes to A and K2's to B.
    let (k1_task, k1_scene) = (TASKS[0], SCENES[0]);
    let (k2_task, k2_scene) = (TASKS[1], SCENES[1]);
    let mut panels = Vec::new();
    for (hub, task, scene) in [(0, k1_task, k1_scene), (1, k2_task, k2_scene)] {
        panels.extend([
            (hub, Endpoint::TaskRealtime, task),
            (hub, Endpoint::TaskBroadcast, task),
            (hub, Endpoint::SceneRealtime, scene),
            (hub, Endpoint::SceneBroadcast, scene),
        ]);
    }
    panels.extend([
        (2, Endpoint::TaskBroadcast, k1_task),
        (2, Endpoint::TaskBroadcast, k2_task),
        (2, Endpoint::SceneBroadcast, k1_scene),
        (2, Endpoint::SceneBroadcast, k2_scene),
    ]);
    let layout = Layout {
        hub_nodes: [vec![1], vec![2], vec![0]],
        owner_nodes: vec![0],
        hub_args: Vec::new(),
        panels,
    };
    let mut world = World::start("scaling", layout).await;
    for (hub, keys) in [(0, 2), (1, 2), (2, 4)] {
        wait_until(
            &format!("hub {hub} holds {keys} subscriptions"),
            PATIENCE,
            || async {
                world.hubs[hub]
                    .metric("vwed_hub_broker_subscriptions")
                    .await
                    == keys as f64
            },
        )
        .await;
    }
    // Every panel holds the seeded state, so every hub has its snapshots; and the owner's node
    // knows of the remote hubs' subscriptions, so nothing published from now on misses them.
    let lost = converge(&world.owner, &world.panels, CONVERGE_WITHIN).await;
    assert!(lost.is_empty(), "before publishing: {lost:?}");
    let subjects = world.owner.publisher().subjects().clone();
    for subject in [
        subjects.task_events(k1_task),
        subjects.scene_events(k1_scene),
        subjects.task_events(k2_task),
        subjects.scene_events(k2_scene),
    ] {
        world.nats.wait_for_remote_interest(0, &subject).await;
    }
    let baseline: Vec<(u64, u64)> = world
        .panels
        .iter()
        .map(|p| {
            let log = p.log();
            (
                log.count("task_execution_update"),
                log.count("storage_location_status_change"),
            )
        })
        .collect();

    // Many events on K2, a few on K1, the last one on K1: by the time a hub has that, it has
    // everything published before it that it would ever get.
    const K2_EVENTS: u64 = 100;
    const K1_EVENTS: u64 = 10;
    for step in 0..K2_EVENTS {
        publish_one_each(&world.owner, k2_task, k2_scene, step).await;
        if step % (K2_EVENTS / K1_EVENTS) == K2_EVENTS / K1_EVENTS - 1 {
            publish_one_each(&world.owner, k1_task, k1_scene, step).await;
        }
    }
    let per_key = |task: &str| {
        if task == k1_task {
            K1_EVENTS
        } else {
            K2_EVENTS
        }
    };
    let world_ref = &world;
    wait_until(
        "every broadcast panel has every event of its key",
        FAULT_PATIENCE,
        || async {
            world_ref
                .panels
                .iter()
                .zip(&baseline)
                .all(|(p, (tasks, scenes))| {
                    let log = p.log();
                    match p.endpoint {
                        Endpoint::TaskBroadcast => {
                            log.count("task_execution_update") == tasks + per_key(&p.key)
                        }
                        Endpoint::SceneBroadcast => {
                            let task = if p.key == k1_scene { k1_task } else { k2_task };
                            log.count("storage_location_status_change") == scenes + per_key(task)
                        }
                        _ => true,
                    }
                })
        },
    )
    .await;

    // Each hub received exactly the events of the keys its clients watch, held exactly one
    // subscription per watched key, and no more.
    let expected = [
        ("A", K1_EVENTS, 2),
        ("B", K2_EVENTS, 2),
        ("C", K1_EVENTS + K2_EVENTS, 4),
    ];
    for (hub, (name, events, keys)) in expected.iter().enumerate() {
        let received = |kind: &str| {
            let metric = format!("vwed_hub_broker_messages_received_total{{kind=\"{kind}\"}}");
            let hub = &world.hubs[hub];
            async move { hub.metric(&metric).await }
        };
        assert_eq!(
            received("task").await,
            *events as f64,
            "task events received by hub {name}"
        );
        assert_eq!(
            received("scene").await,
            *events as f64,
            "scene events received by hub {name}"
        );
        assert_eq!(
            world.hubs[hub]
                .metric("vwed_hub_broker_subscriptions")
                .await,
            *keys as f64,
            "subscriptions of hub {name}"
        );
    }
    eprintln!(
        "scaling: published {} events on K2 and {} on K1; hub A received only K1's",
        2 * K2_EVENTS,
        2 * K1_EVENTS
    );
    world.finish().await;
    world.assert_nobody_disconnected();
}

/// Publishes one task result on `task` and one status change on a location of `scene`.
async fn publish_one_each(owner: &Owner, task: &str, scene: &str, step: u64) {
    owner
        .append(task, &format!("[burst] {step}"), TaskStatus::Running)
        .await;
    let id = location_id(scene, step as usize % LOCATIONS);
    let lock = step & 1 == 0;
    let action = if lock {
        StatusAction::Lock
    } else {
        StatusAction::Unlock
    };
    owner
        .change_status(scene, &id, action, |l| l.is_locked = lock)
        .await;
}
