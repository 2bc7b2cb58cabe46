//! The monitoring page in a real headless Chromium, against a hub in demo mode on its embedded
//! broker: the way a newcomer first meets the hub.

use std::time::Duration;

use futures::StreamExt;
use vwed_demo::Demo;
use vwed_e2e::browser::Browser;
use vwed_e2e::{location, tokens, BrokerKind, Owner, TestBroker, TestHub};
use vwed_publisher::{
    LocationStatus, SceneChange, SceneEvent, SceneTip, StatusAction, Subjects, TaskResult,
    TaskStatus,
};

/// The page's default realtime interval; a change must show within it.
const INTERVAL: Duration = Duration::from_secs(1);

/// Slack for a loaded CI machine on top of the interval.
const SLACK: Duration = Duration::from_millis(1500);

fn cells() -> &'static str {
    "document.querySelectorAll('#grid .cell').length"
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_shows_a_demo_scene_recolours_changes_and_streams_a_task() {
    let hub = TestHub::start_demo().await;
    let demo = hub.hub().demo().expect("the demo runs");
    let scene = demo.scene_ids().first().cloned().expect("a demo scene");
    let expected = demo.location_count(&scene).await.expect("a known scene");
    assert!(expected >= 100, "a demo scene has hundreds of locations");
    let browser = Browser::start(1600, 1000).await;
    let page = format!("http://{}", hub.addr());

    // A demo scene: every location in the grid, and a demo task's log growing by itself.
    browser.open(&format!("{page}/?scene={scene}")).await;
    browser
        .wait_until(
            "the grid socket is open",
            "document.querySelector('#state-grid').dataset.state === 'open'",
        )
        .await;
    // Chromium offers permessage-deflate, the hub takes it (SPEC 2.6), and the scene's state
    // below arrives compressed.
    assert_eq!(
        browser
            .eval("document.querySelector('#state-grid').dataset.extensions")
            .await,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
    browser
        .wait_until(
            "the grid shows every location of the scene",
            &format!("{} === {expected}", cells()),
        )
        .await;
    assert_eq!(
        browser
            .eval("document.querySelector('#grid-total').textContent.replace(/\\D/g, '')")
            .await,
        expected.to_string()
    );
    browser
        .wait_until(
            "the live feed shows status changes",
            "document.querySelectorAll('#feed > li').length > 0",
        )
        .await;
    demo_changes_recolour_their_cells(&browser, &hub, &scene).await;
    a_demo_task_log_grows(&browser, &page, &scene, demo).await;
    let shot = browser.screenshot("monitoring-page.png").await;
    eprintln!("screenshot saved to {}", shot.display());

    // A hub of its own (the demo's snapshot responders would answer for every scene), with a
    // scene and a task of the test's: a status change recolours its cell within one interval,
    // and each appended result joins the task log.
    let broker = TestBroker::start(BrokerKind::Memory).await;
    let owner = Owner::start(&broker).await;
    let hub = TestHub::start(&broker).await;
    let page = format!("http://{}", hub.addr());
    let own_scene: Vec<_> = (1..=8)
        .map(|n| {
            location(
                "page-scene",
                &format!("P-{n}"),
                "A",
                &format!("S{}", (n + 1) / 2),
                n % 2 + 1,
            )
        })
        .collect();
    owner.seed_scene("page-scene", own_scene).await;
    owner
        .seed_task(
            "page-task",
            vec![TaskResult::now("[开始] 页面测试", TaskStatus::Running)],
        )
        .await;
    browser
        .open(&format!("{page}/?scene=page-scene&task=page-task"))
        .await;
    browser
        .wait_until(
            "the grid shows the 8 locations",
            &format!("{} === 8", cells()),
        )
        .await;
    browser
        .wait_until(
            "the task log shows the first result",
            "document.querySelectorAll('#task-log > li').length === 1",
        )
        .await;
    let cell = "document.querySelector('#grid .cell[data-location-id=\"P-3\"]')";
    let looks = format!(
        "(s => [s.backgroundColor, s.backgroundImage, s.borderColor, s.boxShadow])(getComputedStyle({cell}))"
    );
    let looks_before = browser.eval(&looks).await;
    assert_eq!(
        browser
            .eval(&format!("{cell}.classList.contains('locked')"))
            .await,
        false
    );

    owner
        .change_status("page-scene", "P-3", StatusAction::Lock, |l| {
            l.is_locked = true;
            l.locked_by = Some("page-task".into());
        })
        .await;
    browser
        .wait_until_within(
            "the locked cell is recoloured",
            &format!("{cell}.classList.contains('locked')"),
            INTERVAL + SLACK,
        )
        .await;
    assert_ne!(
        browser.eval(&looks).await,
        looks_before,
        "a locked cell looks different"
    );

    owner
        .append("page-task", "[取货] A-01 取货完成", TaskStatus::Running)
        .await;
    owner
        .append("page-task", "[完成] 任务完成", TaskStatus::Success)
        .await;
    browser
        .wait_until(
            "the task log grows to 3 results",
            "document.querySelectorAll('#task-log > li').length === 3",
        )
        .await;
    assert_eq!(
        browser.eval("document.querySelector('#task-log > li:last-child').textContent.includes('[完成] 任务完成')").await,
        true
    );
    assert_eq!(
        browser
            .eval("document.querySelector('#task-status').textContent.includes('SUCCESS')")
            .await,
        true
    );

    // A hub that requires tokens: the page passes its `?token=` as a subprotocol, which the
    // browser accepts only because the hub selects `vwed`.
    let guarded = TestHub::start_with(&broker, |c| {
        c.jwt_secret = Some(tokens::SECRET.parse().expect("a secret"));
    })
    .await;
    let guarded_page = format!("http://{}", guarded.addr());
    let token = tokens::hs256(&tokens::claims(&["page-scene"], &["page-task"]));
    browser
        .open(&format!(
            "{guarded_page}/?scene=page-scene&task=page-task&token={token}"
        ))
        .await;
    browser
        .wait_until(
            "the grid shows the 8 locations through a token",
            &format!("{} === 8", cells()),
        )
        .await;
    let other_scene = tokens::hs256(&tokens::claims(&["another-scene"], &["page-task"]));
    browser
        .open(&format!(
            "{guarded_page}/?scene=page-scene&token={other_scene}"
        ))
        .await;
    browser
        .wait_until(
            "a token for another scene stops the grid's socket",
            "document.querySelector('#state-grid .conn-label').textContent === 'stopped'",
        )
        .await;
    assert_eq!(browser.eval(&format!("{} === 0", cells())).await, true);
    browser.close().await;
}

/// Opens running demo tasks one after another until the page shows one gain a result (a task
/// may end before it does).
async fn a_demo_task_log_grows(browser: &Browser, page: &str, scene: &str, demo: &Demo) {
    let results = "document.querySelectorAll('#task-log > li').length";
    let ended =
        "['SUCCESS', 'FAILED'].includes(document.querySelector('#task-status').textContent)";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        for task in demo.running_tasks().await {
            browser
                .open(&format!("{page}/?scene={scene}&task={task}"))
                .await;
            browser
                .wait_until(
                    &format!("task {task} shows its results"),
                    &format!("{results} > 0"),
                )
                .await;
            let before = browser.eval(results).await;
            let grew = format!("{results} > {before} || {ended}");
            browser
                .wait_until(&format!("task {task} grows or ends"), &grew)
                .await;
            if browser.eval(&format!("{results} > {before}")).await == true {
                return;
            }
        }
    }
    panic!("no demo task gained a result on the page");
}

/// Watches the demo's own status changes on the bus: each changed location's cell must come to
/// show the location's latest status within one interval of its last change.
async fn demo_changes_recolour_their_cells(browser: &Browser, hub: &TestHub, scene: &str) {
    let bus = hub.hub().bus().expect("the embedded bus");
    let mut events = bus.subscribe(Subjects::default().scene_events(scene));
    let mut checked = 0;
    while checked < 3 {
        let message = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("the demo changes its scenes")
            .expect("the bus is open");
        // The demo's storage service also tips its scenes (SPEC 3): those are not changes.
        if serde_json::from_slice::<SceneTip>(&message.payload).is_ok() {
            continue;
        }
        let event: SceneEvent = serde_json::from_slice(&message.payload).expect("a scene event");
        let SceneChange::StatusChange { new_status, .. } = event.change else {
            continue;
        };
        let mut latest = new_status;
        let mut deadline = tokio::time::Instant::now() + INTERVAL + SLACK;
        // Later events (for any location) arrive meanwhile; a newer one for this location moves
        // the goal and the deadline.
        loop {
            if cell_shows(browser, &latest).await {
                checked += 1;
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cell {} does not show {latest:?}",
                latest.id
            );
            while let Ok(Some(message)) =
                tokio::time::timeout(Duration::from_millis(50), events.next()).await
            {
                if let Ok(SceneEvent {
                    change: SceneChange::StatusChange { new_status, .. },
                    ..
                }) = serde_json::from_slice(&message.payload)
                {
                    if new_status.id == latest.id {
                        latest = new_status;
                        deadline = tokio::time::Instant::now() + INTERVAL + SLACK;
                    }
                }
            }
        }
    }
}

/// Whether the location's cell carries exactly the state classes of `status`.
async fn cell_shows(browser: &Browser, status: &LocationStatus) -> bool {
    let classes = browser
        .eval(&format!(
            "(c => c && ['occupied', 'locked', 'disabled', 'empty-tray'].map(k => c.classList.contains(k)))\
             (document.querySelector('#grid .cell[data-location-id=\"' + CSS.escape({}) + '\"]'))",
            serde_json::Value::String(status.id.clone())
        ))
        .await;
    classes
        == serde_json::json!([
            status.is_occupied,
            status.is_locked,
            status.is_disabled,
            status.is_empty_tray
        ])
}
