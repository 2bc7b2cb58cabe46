//! The lifecycle of one transport task, as a task engine runs it: create the record, pick and
//! lock a source location holding goods and a free destination, send an AGV, pick up, move,
//! drop, and finish in SUCCESS (goods moved, both unlocked) or FAILED (both unlocked, goods
//! where they were). Each step yields one result for the task's list and the scene changes it
//! caused; the engine publishes them.

use std::time::{SystemTime, UNIX_EPOCH};

use fastrand::Rng;
use vwed_publisher::{TaskResult, TaskStatus};

use crate::scenes::{can_give_goods, can_take_goods, Goods, SceneOp, SceneState};

/// Share of tasks that fail on the way; the rest succeed.
const FAILURE_RATE: f64 = 0.15;

/// Task record ids of one process, `TR-<yyyymmdd>-<nnnnnn>` like a task engine's.
#[derive(Debug)]
pub(crate) struct TaskIds {
    /// The number of the next task.
    next: u64,
}

impl TaskIds {
    /// Starts numbering at the tenths of a second since midnight (UTC): a restarted demo then
    /// starts above the ids of its previous run (unless that run made more than ten tasks a
    /// second), so a hub never mixes an old task's results into a new one of the same id.
    pub(crate) fn new() -> Self {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        Self {
            next: u64::try_from(millis % 86_400_000 / 100).unwrap_or(0) + 1,
        }
    }

    /// The next id, dated `now` (an API timestamp).
    pub(crate) fn next(&mut self, now: &str) -> String {
        let date: String = now.chars().take(10).filter(|c| *c != '-').collect();
        let id = format!("TR-{date}-{:06}", self.next);
        self.next += 1;
        id
    }
}

/// Where a task is in its life; each step performs the stage and moves to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The record is created.
    Start,
    /// Source and destination are picked and locked.
    Select,
    /// An AGV takes the job.
    Assign,
    /// The AGV drives to the source station.
    ToSource,
    /// The AGV picks the goods up.
    Pickup,
    /// The AGV drives to the destination station.
    Move,
    /// The AGV puts the goods down.
    Drop,
    /// The storage records are updated and the task succeeds.
    Finish,
    /// Nothing more happens.
    Done,
}

/// What one step of a task produced.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    /// The result to append to the task's list.
    pub(crate) result: TaskResult,
    /// Scene changes the step caused, in the order they happened; publish them in this order.
    pub(crate) scene_ops: Vec<SceneOp>,
}

impl Step {
    /// Whether the task ended with this step (its result is SUCCESS or FAILED).
    pub(crate) fn is_final(&self) -> bool {
        self.result.status != TaskStatus::Running
    }
}

/// One running transport task inside one scene.
#[derive(Debug, Clone)]
pub(crate) struct TaskRun {
    /// The task record id; also what the task's locks carry in `locked_by`, which is how a
    /// monitoring page links a locked location to its task.
    pub(crate) id: String,
    /// Index of the task's scene in the engine's scene list.
    pub(crate) scene: usize,
    /// The stage the next step performs.
    stage: Stage,
    /// The stage at which this task will fail, drawn up front (None: it succeeds).
    fails_at: Option<Stage>,
    /// Index of the source location, once picked.
    source: Option<usize>,
    /// Index of the destination location, once picked.
    destination: Option<usize>,
    /// The AGV on the job, once assigned; given back when the task ends.
    agv: Option<String>,
}

/// A finished step's result.
fn result(now: &str, context: String, status: TaskStatus) -> TaskResult {
    TaskResult {
        created_at: now.to_owned(),
        context,
        status,
    }
}

impl TaskRun {
    /// A new task `id` in the scene at index `scene`; whether and where it fails is drawn now.
    pub(crate) fn new(id: String, scene: usize, rng: &mut Rng) -> Self {
        let fails_at = (rng.f64() < FAILURE_RATE)
            .then(|| [Stage::ToSource, Stage::Pickup, Stage::Move][rng.usize(..3)]);
        Self {
            id,
            scene,
            stage: Stage::Start,
            fails_at,
            source: None,
            destination: None,
            agv: None,
        }
    }

    /// Whether the task has ended.
    pub(crate) fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    /// Performs the next stage on `scene` (which must be the task's scene) at time `now`;
    /// None once the task has ended.
    pub(crate) fn advance(
        &mut self,
        scene: &mut SceneState,
        rng: &mut Rng,
        now: &str,
    ) -> Option<Step> {
        let running = |context: String| Step {
            result: result(now, context, TaskStatus::Running),
            scene_ops: Vec::new(),
        };
        if self.fails_at == Some(self.stage) {
            return Some(self.fail(scene, now));
        }
        let step = match self.stage {
            Stage::Done => return None,
            Stage::Start => {
                self.stage = Stage::Select;
                running(format!(
                    "[任务开始] 搬运任务 {} 已创建, 场景 {}",
                    self.id, scene.scene_id
                ))
            }
            Stage::Select => match pick_locations(scene, rng) {
                Some((source, destination)) => {
                    self.source = Some(source);
                    self.destination = Some(destination);
                    self.stage = Stage::Assign;
                    let goods = scene
                        .goods_at(source)
                        .map(|g| g.content)
                        .unwrap_or_default();
                    let scene_ops = vec![
                        scene.lock(source, &self.id, now),
                        scene.lock(destination, &self.id, now),
                    ];
                    Step {
                        result: result(
                            now,
                            format!(
                                "[选择库位] 源库位 {} ({goods}) → 目标库位 {}, 已锁定",
                                scene.locations[source].layer_name,
                                scene.locations[destination].layer_name
                            ),
                            TaskStatus::Running,
                        ),
                        scene_ops,
                    }
                }
                None => {
                    self.stage = Stage::Done;
                    Step {
                        result: result(
                            now,
                            "[选择库位] 无可用的源库位或目标库位, 任务取消".to_owned(),
                            TaskStatus::Failed,
                        ),
                        scene_ops: Vec::new(),
                    }
                }
            },
            Stage::Assign => {
                let agv = scene.assign_agv(rng);
                self.stage = Stage::ToSource;
                let step = running(format!(
                    "[分配AGV] {agv} 接受任务, 电量 {}%",
                    rng.u8(35..=98)
                ));
                self.agv = Some(agv);
                step
            }
            Stage::ToSource => {
                self.stage = Stage::Pickup;
                let (station, point) = self.station(scene, self.source);
                running(format!("[{}] 前往 {station} (动作点 {point})", self.agv()))
            }
            Stage::Pickup => {
                self.stage = Stage::Move;
                running(format!(
                    "[取货] {} 取货完成",
                    self.layer(scene, self.source)
                ))
            }
            Stage::Move => {
                self.stage = Stage::Drop;
                let (station, point) = self.station(scene, self.destination);
                running(format!(
                    "[移动] {} 前往 {station} (动作点 {point})",
                    self.agv()
                ))
            }
            Stage::Drop => {
                self.stage = Stage::Finish;
                running(format!(
                    "[放货] {} 放货完成",
                    self.layer(scene, self.destination)
                ))
            }
            Stage::Finish => self.succeed(scene, now),
        };
        Some(step)
    }

    /// Moves the goods, unlocks both locations and ends the task in SUCCESS.
    fn succeed(&mut self, scene: &mut SceneState, now: &str) -> Step {
        self.stage = Stage::Done;
        let mut scene_ops = Vec::new();
        let mut moved = String::new();
        if let (Some(source), Some(destination)) = (self.source, self.destination) {
            // The source was locked for this task since Select and held goods then; nothing
            // else touches a task's locations, so the goods are still there.
            let goods: Option<Goods> = scene.goods_at(source);
            if let Some(goods) = goods {
                moved = goods.content.clone();
                scene_ops.push(scene.release(source, now));
                scene_ops.push(scene.occupy(destination, goods, now));
            }
            scene_ops.push(scene.unlock(source, now));
            scene_ops.push(scene.unlock(destination, now));
            scene_ops.push(SceneOp::Upsert(vec![
                scene.record(source),
                scene.record(destination),
            ]));
        }
        self.give_back_agv(scene);
        Step {
            result: result(
                now,
                format!(
                    "[任务完成] 搬运完成: {moved} {} → {}",
                    self.layer(scene, self.source),
                    self.layer(scene, self.destination)
                ),
                TaskStatus::Success,
            ),
            scene_ops,
        }
    }

    /// Unlocks what the task locked, leaves the goods where they are and ends the task in
    /// FAILED, with a reason that fits the stage it failed at.
    fn fail(&mut self, scene: &mut SceneState, now: &str) -> Step {
        let context = match self.stage {
            Stage::ToSource => format!("[异常] {} 路径阻塞, 任务终止", self.agv()),
            Stage::Pickup => format!(
                "[异常] {} 取货失败: 托盘识别超时, 任务终止",
                self.layer(scene, self.source)
            ),
            _ => format!(
                "[异常] {} 路径阻塞, 货物退回 {}, 任务终止",
                self.agv(),
                self.layer(scene, self.source)
            ),
        };
        self.stage = Stage::Done;
        let scene_ops = [self.source, self.destination]
            .into_iter()
            .flatten()
            .map(|n| scene.unlock(n, now))
            .collect();
        self.give_back_agv(scene);
        Step {
            result: result(now, context, TaskStatus::Failed),
            scene_ops,
        }
    }

    fn give_back_agv(&mut self, scene: &mut SceneState) {
        if let Some(agv) = self.agv.take() {
            scene.release_agv(&agv);
        }
    }

    fn agv(&self) -> &str {
        self.agv.as_deref().unwrap_or("AGV")
    }

    fn layer(&self, scene: &SceneState, index: Option<usize>) -> String {
        index
            .and_then(|n| scene.locations.get(n))
            .map(|l| l.layer_name.clone())
            .unwrap_or_default()
    }

    /// The station and its action point, where the AGV drives to.
    fn station(&self, scene: &SceneState, index: Option<usize>) -> (String, String) {
        index
            .and_then(|n| scene.locations.get(n))
            .map(|l| {
                (
                    l.station_name.clone(),
                    l.operate_point_id.clone().unwrap_or_default(),
                )
            })
            .unwrap_or_default()
    }
}

/// Picks a source holding goods and a free destination at another station that can bear
/// them; None when the scene has no such pair.
fn pick_locations(scene: &SceneState, rng: &mut Rng) -> Option<(usize, usize)> {
    let sources: Vec<usize> = (0..scene.locations.len())
        .filter(|&n| can_give_goods(&scene.locations[n]))
        .collect();
    let source = *sources.get(rng.usize(..sources.len().max(1)))?;
    let goods = scene.goods_at(source)?;
    let from = &scene.locations[source];
    let destinations: Vec<usize> = (0..scene.locations.len())
        .filter(|&n| {
            let to = &scene.locations[n];
            can_take_goods(to)
                && to.station_name != from.station_name
                && to.max_weight.is_none_or(|max| max >= goods.weight)
                && to.max_volume.is_none_or(|max| max >= goods.volume)
        })
        .collect();
    let destination = *destinations.get(rng.usize(..destinations.len().max(1)))?;
    Some((source, destination))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use vwed_publisher::StatusAction;

    use super::*;
    use crate::background::next_change;
    use crate::scenes::seed_scene;
    use crate::scenes::tests::assert_consistent;

    const NOW: &str = "2025-06-11T12:00:00.000Z";

    /// Runs a task to its end, with background changes between its steps as in the demo.
    fn run_to_end(scene: &mut SceneState, seed: u64) -> (TaskRun, Vec<Step>) {
        let mut rng = Rng::with_seed(seed);
        let mut task = TaskRun::new(format!("TR-20250611-{seed:06}"), 0, &mut rng);
        let mut steps = Vec::new();
        while let Some(step) = task.advance(scene, &mut rng, NOW) {
            steps.push(step);
            for _ in 0..3 {
                next_change(scene, &mut rng, NOW);
            }
            assert!(steps.len() < 20, "the task ends");
        }
        (task, steps)
    }

    /// Layer names of the locations a status op of `action` names, in order.
    fn named(steps: &[Step], action: StatusAction) -> Vec<String> {
        steps
            .iter()
            .flat_map(|s| &s.scene_ops)
            .filter_map(|op| match op {
                SceneOp::Status {
                    layer_name,
                    action: a,
                    ..
                } if *a == action => Some(layer_name.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn tasks_end_in_success_or_failure_and_unlock_what_they_locked() {
        let mut scene = seed_scene(0, SystemTime::now());
        let (mut successes, mut failures) = (0, 0);
        for seed in 0..300 {
            let (task, steps) = run_to_end(&mut scene, seed);
            assert!(task.is_done());
            let (last, running) = steps.split_last().expect("results");
            assert!(running
                .iter()
                .all(|s| s.result.status == TaskStatus::Running && !s.is_final()));
            assert!(last.is_final());
            assert!(steps[0].result.context.starts_with("[任务开始]"));
            assert!(steps.iter().all(|s| s.result.context.starts_with('[')));

            let locked = named(&steps, StatusAction::Lock);
            let mut unlocked = named(&steps, StatusAction::Unlock);
            assert_eq!(locked.len(), 2, "source and destination");
            unlocked.sort();
            let mut expected = locked.clone();
            expected.sort();
            assert_eq!(unlocked, expected, "everything locked is unlocked");
            for layer in &locked {
                let l = scene
                    .locations
                    .iter()
                    .find(|l| &l.layer_name == layer)
                    .expect("a known layer");
                assert_ne!(l.locked_by.as_deref(), Some(task.id.as_str()));
            }
            // The locks carried the task id while the task ran.
            let lock_holders: Vec<Option<String>> = steps
                .iter()
                .flat_map(|s| &s.scene_ops)
                .filter_map(|op| match op {
                    SceneOp::Status {
                        action: StatusAction::Lock,
                        status,
                        ..
                    } => Some(status.locked_by.clone()),
                    _ => None,
                })
                .collect();
            assert!(lock_holders.iter().all(|h| h.as_deref() == Some(&task.id)));

            match last.result.status {
                TaskStatus::Success => {
                    successes += 1;
                    assert!(last.result.context.starts_with("[任务完成]"));
                    assert_eq!(named(&steps, StatusAction::Release), locked[..1]);
                    assert_eq!(named(&steps, StatusAction::Occupy), locked[1..]);
                    assert!(
                        matches!(last.scene_ops.last(), Some(SceneOp::Upsert(r)) if r.len() == 2)
                    );
                }
                TaskStatus::Failed => {
                    failures += 1;
                    assert!(named(&steps, StatusAction::Release).is_empty());
                    assert!(named(&steps, StatusAction::Occupy).is_empty());
                }
                TaskStatus::Running => unreachable!(),
            }
            assert_consistent(&scene);
        }
        assert!(successes > 220 && failures > 20, "{successes} / {failures}");
    }

    #[test]
    fn a_successful_task_moves_the_goods() {
        let mut scene = seed_scene(1, SystemTime::now());
        let mut rng = Rng::with_seed(99);
        let mut task = TaskRun::new("TR-20250611-000042".into(), 0, &mut rng);
        task.fails_at = None;
        let mut before = None;
        while let Some(step) = task.advance(&mut scene, &mut rng, NOW) {
            if let (Some(source), None) = (task.source, &before) {
                let destination = task.destination.expect("picked with the source");
                before = Some((source, destination, scene.goods_at(source)));
                assert!(scene.locations[source].is_locked);
                assert!(scene.locations[destination].is_locked);
                assert!(!scene.locations[destination].is_occupied);
            }
            if step.is_final() {
                assert_eq!(step.result.status, TaskStatus::Success);
            }
        }
        let (source, destination, goods) = before.expect("locations were picked");
        assert!(goods.is_some());
        assert_eq!(scene.goods_at(destination), goods);
        assert_eq!(scene.goods_at(source), None);
        assert!(!scene.locations[source].is_locked && !scene.locations[destination].is_locked);
        assert_ne!(
            scene.locations[source].station_name,
            scene.locations[destination].station_name
        );
        assert_consistent(&scene);
    }

    #[test]
    fn a_task_with_nowhere_to_go_fails_at_once_without_locking() {
        let mut scene = seed_scene(2, SystemTime::now());
        for n in 0..scene.locations.len() {
            if scene.locations[n].is_occupied && !scene.locations[n].is_locked {
                scene.release(n, NOW);
            }
        }
        let mut rng = Rng::with_seed(1);
        let mut task = TaskRun::new("TR-20250611-000007".into(), 0, &mut rng);
        task.fails_at = None;
        let steps: Vec<Step> =
            std::iter::from_fn(|| task.advance(&mut scene, &mut rng, NOW)).collect();
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[1].result.status, TaskStatus::Failed);
        assert!(steps.iter().all(|s| s.scene_ops.is_empty()));
    }

    #[test]
    fn task_ids_look_like_vwed_records_and_count_up() {
        let mut ids = TaskIds::new();
        let first = ids.next("2025-11-25T19:34:00.000Z");
        let second = ids.next("2025-11-25T19:34:01.000Z");
        assert!(first.starts_with("TR-20251125-"), "{first}");
        assert_eq!(first.len(), "TR-20251125-000123".len());
        assert!(second > first);
    }
}
