//! Background activity of a storage service, besides the tasks: goods put away and picked by
//! hand, stock counts locking locations, maintenance disabling them, empty trays coming and
//! going. Each change is drawn so that it is possible in the current state (e.g. OCCUPY only
//! on a free, enabled, unlocked location) and so that each share hovers around a realistic
//! level instead of drifting (about half the locations occupied, about 3% disabled).

use fastrand::Rng;

use crate::scenes::{
    can_give_goods, can_take_goods, random_goods, SceneOp, SceneState, MANUAL_LOCKERS,
};

/// One kind of background change, each with an increasing and a decreasing direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dimension {
    /// Occupy / release.
    Goods,
    /// Lock / unlock by people (never a task's lock).
    ManualLock,
    /// Set / clear empty tray.
    EmptyTray,
    /// Disable / enable.
    Disabled,
}

/// How often each dimension changes (weights), and the share of locations it steers to.
/// Disabling is rare and its target small, so a disabled location is soon enabled again.
const DIMENSIONS: [(Dimension, u32, f64); 4] = [
    (Dimension::Goods, 50, 0.5),
    (Dimension::ManualLock, 20, 0.04),
    (Dimension::EmptyTray, 18, 0.08),
    (Dimension::Disabled, 12, 0.03),
];

/// Draws one background change that is valid in `scene`, applies it and returns what to
/// publish, in order; empty when nothing could change (e.g. everything is locked).
///
/// The direction of a dimension (e.g. occupy or release) is drawn so that, at the target
/// share, both are equally likely, and past it the one that brings the share back wins: each
/// share is a random walk pulled towards its target.
pub(crate) fn next_change(scene: &mut SceneState, rng: &mut Rng, now: &str) -> Vec<SceneOp> {
    let total_weight: u32 = DIMENSIONS.iter().map(|d| d.1).sum();
    let mut pick = rng.u32(..total_weight);
    let mut first = 0;
    for (n, (_, weight, _)) in DIMENSIONS.iter().enumerate() {
        if pick < *weight {
            first = n;
            break;
        }
        pick -= weight;
    }
    // Fall back to the other dimensions when the drawn one has no candidate, so the requested
    // rate of changes holds even in odd states.
    for offset in 0..DIMENSIONS.len() {
        let (dimension, _, target) = DIMENSIONS[(first + offset) % DIMENSIONS.len()];
        let increase = rng.f64() < increase_probability(share(scene, dimension), target);
        for up in [increase, !increase] {
            if let Some(ops) = apply(scene, dimension, up, rng, now) {
                return ops;
            }
        }
    }
    Vec::new()
}

/// The probability of moving a share `share` up so that it reverts to `target`.
fn increase_probability(share: f64, target: f64) -> f64 {
    let up = (1.0 - share) * target;
    let down = share * (1.0 - target);
    if up + down <= 0.0 {
        0.5
    } else {
        up / (up + down)
    }
}

/// The share of the scene's locations that is "up" in `dimension`.
fn share(scene: &SceneState, dimension: Dimension) -> f64 {
    let up = scene
        .locations
        .iter()
        .filter(|l| match dimension {
            Dimension::Goods => l.is_occupied,
            Dimension::ManualLock => is_manual_lock(l.locked_by.as_deref()),
            Dimension::EmptyTray => l.is_empty_tray,
            Dimension::Disabled => l.is_disabled,
        })
        .count();
    up as f64 / scene.locations.len().max(1) as f64
}

/// Whether a lock was taken by people, so background changes may undo it (a task's lock is
/// the task's to release).
fn is_manual_lock(locked_by: Option<&str>) -> bool {
    locked_by.is_some_and(|holder| MANUAL_LOCKERS.contains(&holder))
}

/// Applies one change in `dimension` (`up` = occupy, lock, set tray, disable) to a random
/// location where it is possible; None when no location qualifies.
fn apply(
    scene: &mut SceneState,
    dimension: Dimension,
    up: bool,
    rng: &mut Rng,
    now: &str,
) -> Option<Vec<SceneOp>> {
    let candidates: Vec<usize> = scene
        .locations
        .iter()
        .enumerate()
        .filter(|(_, l)| match (dimension, up) {
            (Dimension::Goods, true) => can_take_goods(l),
            (Dimension::Goods, false) => can_give_goods(l),
            (Dimension::ManualLock, true) => !l.is_locked && !l.is_disabled,
            (Dimension::ManualLock, false) => is_manual_lock(l.locked_by.as_deref()),
            (Dimension::EmptyTray, true) => can_take_goods(l) && !l.is_empty_tray,
            (Dimension::EmptyTray, false) => l.is_empty_tray && !l.is_locked && !l.is_disabled,
            // Locked locations are in use (a task may hold them), so they are not disabled.
            (Dimension::Disabled, true) => !l.is_locked && !l.is_disabled,
            (Dimension::Disabled, false) => l.is_disabled,
        })
        .map(|(n, _)| n)
        .collect();
    let index = *candidates.get(rng.usize(..candidates.len().max(1)))?;
    let ops = match (dimension, up) {
        (Dimension::Goods, true) => {
            let goods = random_goods(scene.kind(index), rng);
            let status = scene.occupy(index, goods, now);
            vec![status, SceneOp::Upsert(vec![scene.record(index)])]
        }
        (Dimension::Goods, false) => {
            let status = scene.release(index, now);
            vec![status, SceneOp::Upsert(vec![scene.record(index)])]
        }
        (Dimension::ManualLock, true) => {
            let holder = MANUAL_LOCKERS[rng.usize(..MANUAL_LOCKERS.len())];
            vec![scene.lock(index, holder, now)]
        }
        (Dimension::ManualLock, false) => vec![scene.unlock(index, now)],
        (Dimension::EmptyTray, true) => vec![scene.set_empty_tray(index, now)],
        (Dimension::EmptyTray, false) => vec![scene.clear_empty_tray(index, now)],
        (Dimension::Disabled, true) => vec![scene.disable(index, now)],
        (Dimension::Disabled, false) => vec![scene.enable(index, now)],
    };
    Some(ops)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::SystemTime;

    use vwed_publisher::{StatusAction, StorageLocation};

    use super::*;
    use crate::scenes::seed_scene;
    use crate::scenes::tests::assert_consistent;

    const NOW: &str = "2025-06-11T12:00:00.000Z";

    /// Checks that `action` was allowed on `before`, the location as it was.
    fn assert_allowed(action: &StatusAction, before: &StorageLocation) {
        let ok = match action {
            StatusAction::Occupy => can_take_goods(before),
            StatusAction::Release => can_give_goods(before),
            StatusAction::Lock => !before.is_locked && !before.is_disabled,
            StatusAction::Unlock => is_manual_lock(before.locked_by.as_deref()),
            StatusAction::SetEmptyTray => can_take_goods(before) && !before.is_empty_tray,
            StatusAction::ClearEmptyTray => before.is_empty_tray && !before.is_locked,
            StatusAction::Disable => !before.is_disabled && !before.is_locked,
            StatusAction::Enable => before.is_disabled,
            other => panic!("unexpected action {other}"),
        };
        assert!(ok, "{action} on {before:?}");
    }

    #[test]
    fn every_change_is_possible_and_keeps_the_scene_consistent() {
        let mut scene = seed_scene(0, SystemTime::now());
        let mut rng = Rng::with_seed(7);
        let mut actions: HashMap<String, usize> = HashMap::new();
        for _ in 0..5_000 {
            let before = scene.clone();
            let ops = next_change(&mut scene, &mut rng, NOW);
            let Some(SceneOp::Status {
                layer_name,
                action,
                status,
            }) = ops.first()
            else {
                panic!("a status change first: {ops:?}");
            };
            let index = before
                .locations
                .iter()
                .position(|l| &l.layer_name == layer_name)
                .expect("a known layer");
            assert_allowed(action, &before.locations[index]);
            assert_eq!(status.id, scene.locations[index].id);
            // Only the named location changed.
            for (n, (old, new)) in before.locations.iter().zip(&scene.locations).enumerate() {
                if n != index {
                    assert_eq!(old, new);
                }
            }
            // Goods changes also carry the whole record, as it is now.
            if matches!(action, StatusAction::Occupy | StatusAction::Release) {
                assert_eq!(
                    ops.get(1),
                    Some(&SceneOp::Upsert(vec![scene.locations[index].clone()]))
                );
            } else {
                assert_eq!(ops.len(), 1);
            }
            assert_eq!(&scene.locations[index].status(), status);
            *actions.entry(action.to_string()).or_default() += 1;
        }
        assert_consistent(&scene);
        for action in [
            "OCCUPY",
            "RELEASE",
            "LOCK",
            "UNLOCK",
            "DISABLE",
            "ENABLE",
            "SET_EMPTY_TRAY",
            "CLEAR_EMPTY_TRAY",
        ] {
            assert!(
                actions.get(action).copied().unwrap_or(0) > 50,
                "{actions:?}"
            );
        }
    }

    #[test]
    fn shares_stay_near_their_targets() {
        let mut scene = seed_scene(1, SystemTime::now());
        let mut rng = Rng::with_seed(11);
        let mut disabled_max = 0.0_f64;
        for _ in 0..20_000 {
            next_change(&mut scene, &mut rng, NOW);
            disabled_max = disabled_max.max(share(&scene, Dimension::Disabled));
        }
        let occupied = share(&scene, Dimension::Goods);
        assert!((0.35..0.65).contains(&occupied), "{occupied}");
        assert!(disabled_max < 0.08, "{disabled_max}");
    }

    #[test]
    fn task_locks_are_left_alone() {
        let mut scene = seed_scene(2, SystemTime::now());
        for n in 0..scene.locations.len() {
            if !scene.locations[n].is_locked && !scene.locations[n].is_disabled {
                scene.lock(n, "TR-20250611-000001", NOW);
            }
        }
        let held: Vec<usize> = (0..scene.locations.len())
            .filter(|&n| scene.locations[n].locked_by.as_deref() == Some("TR-20250611-000001"))
            .collect();
        let mut rng = Rng::with_seed(5);
        for _ in 0..2_000 {
            next_change(&mut scene, &mut rng, NOW);
        }
        for n in held {
            let l = &scene.locations[n];
            assert_eq!(l.locked_by.as_deref(), Some("TR-20250611-000001"), "{l:?}");
            assert!(!l.is_disabled);
        }
    }

    #[test]
    fn the_pull_towards_a_target_is_balanced_at_the_target() {
        assert!((increase_probability(0.5, 0.5) - 0.5).abs() < 1e-9);
        assert!((increase_probability(0.03, 0.03) - 0.5).abs() < 1e-9);
        assert!(increase_probability(0.10, 0.03) < 0.25);
        assert_eq!(increase_probability(0.0, 0.03), 1.0);
    }
}
