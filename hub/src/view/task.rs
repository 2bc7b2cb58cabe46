//! A task record's result list.

use vwed_publisher::{TaskChange, TaskEvent, TaskResult, TaskSnapshot, TaskTip};

use super::{Applied, View};
use crate::messages::{Envelope, Frame, Kind};

/// The full result list of one task record, in the order the owner appended it.
#[derive(Debug, Default)]
pub struct TaskView {
    /// Distinguishes "no results yet" from "the owner does not know this task".
    exists: bool,
    /// Every result so far; index `i` is the owner's result `i`.
    results: Vec<TaskResult>,
}

impl View for TaskView {
    const KIND: Kind = Kind::Task;
    type Event = TaskEvent;
    type Snapshot = TaskSnapshot;
    type Tip = TaskTip;
    type Filter = ();
    type Notice = ();

    fn from_snapshot(snapshot: TaskSnapshot) -> (u64, Self) {
        let view = Self {
            exists: true,
            results: snapshot.results,
        };
        (snapshot.rev, view)
    }

    fn event_rev(event: &TaskEvent) -> u64 {
        event.rev
    }

    fn event_prev_rev(event: &TaskEvent) -> Option<u64> {
        event.prev_rev
    }

    fn tip_rev(tip: &TaskTip) -> u64 {
        tip.rev
    }

    fn exists(&self) -> bool {
        self.exists
    }

    fn apply(&mut self, event: &TaskEvent) -> Applied<()> {
        match &event.change {
            TaskChange::Append { index, results } => {
                let Ok(start) = usize::try_from(*index) else {
                    return Applied::Gap;
                };
                if start > self.results.len() {
                    return Applied::Gap;
                }
                let overlap = (self.results.len() - start).min(results.len());
                self.results[start..start + overlap].clone_from_slice(&results[..overlap]);
                self.results.extend_from_slice(&results[overlap..]);
            }
            TaskChange::Replace { results } => self.results.clone_from(results),
        }
        self.exists = true;
        Applied::Changed(None)
    }

    fn event_frames(envelope: &Envelope, event: &TaskEvent) -> Vec<Frame> {
        vec![envelope.state(&to_json(event.change.results()))]
    }

    fn render(&self, _filter: &()) -> Vec<u8> {
        to_json(&self.results)
    }

    fn notice_reaches(_notice: &(), _filter: &()) -> bool {
        false
    }
}

fn to_json(results: &[TaskResult]) -> Vec<u8> {
    // Results are plain strings and enums: serializing them cannot fail.
    serde_json::to_vec(results).unwrap_or_else(|_| b"[]".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vwed_publisher::TaskStatus;

    fn result(n: usize) -> TaskResult {
        TaskResult {
            created_at: format!("2025-06-11T12:00:0{n}.000Z"),
            context: format!("[块{n}] 执行"),
            status: TaskStatus::Running,
        }
    }

    fn append(rev: u64, index: u64, from: usize, count: usize) -> TaskEvent {
        TaskEvent {
            task_record_id: "t".into(),
            rev,
            prev_rev: None,
            change: TaskChange::Append {
                index,
                results: (from..from + count).map(result).collect(),
            },
        }
    }

    #[test]
    fn appends_extend_and_overwrite_in_place() {
        let mut view = TaskView::default();
        assert!(!view.exists());
        assert_eq!(view.apply(&append(1, 0, 0, 2)), Applied::Changed(None));
        assert_eq!(view.apply(&append(2, 1, 1, 3)), Applied::Changed(None));
        assert_eq!(view.results, (0..4).map(result).collect::<Vec<_>>());
        assert!(view.exists());
    }

    #[test]
    fn applying_an_event_twice_changes_nothing() {
        let mut view = TaskView::default();
        let event = append(1, 0, 0, 3);
        view.apply(&event);
        let once = view.results.clone();
        view.apply(&event);
        assert_eq!(view.results, once);
    }

    #[test]
    fn an_index_past_the_end_is_a_gap() {
        let mut view = TaskView::default();
        view.apply(&append(1, 0, 0, 1));
        assert_eq!(view.apply(&append(3, 2, 2, 1)), Applied::Gap);
        assert_eq!(view.results.len(), 1);
        assert_eq!(view.apply(&append(4, u64::MAX, 2, 1)), Applied::Gap);
    }

    #[test]
    fn replace_sets_the_whole_list() {
        let mut view = TaskView::default();
        view.apply(&append(1, 0, 0, 5));
        let replace = TaskEvent {
            task_record_id: "t".into(),
            rev: 2,
            prev_rev: None,
            change: TaskChange::Replace {
                results: vec![result(9)],
            },
        };
        view.apply(&replace);
        assert_eq!(view.results, vec![result(9)]);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&view.render(&())).unwrap(),
            serde_json::json!([{"created_at": "2025-06-11T12:00:09.000Z", "context": "[块9] 执行", "status": "RUNNING"}])
        );
    }
}
