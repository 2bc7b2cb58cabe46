//! A scene's storage locations.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use vwed_publisher::{
    LocationStatus, SceneChange, SceneEvent, SceneSnapshot, SceneTip, StatusAction, StorageLocation,
};

use super::{Applied, FilterFields, LocationFilter, LocationOrder, View};
use crate::messages::{Envelope, Frame, Kind};

/// Locations per page of a `storage_location_update` (SPEC 2.1).
pub const PAGE_SIZE: usize = 1000;

/// Every storage location of one scene, kept in listing order so renders never sort.
#[derive(Debug, Default)]
pub struct SceneView {
    /// Distinguishes "no locations" from "the owner does not know this scene".
    exists: bool,
    /// The locations in the order clients see them.
    locations: BTreeMap<LocationOrder, StorageLocation>,
    /// Where each id sits in `locations`, for updates by id.
    order_of: HashMap<String, LocationOrder>,
}

/// A status change, as much of it as filters need to decide who hears of it: the location's
/// fields before and after the change.
#[derive(Debug, PartialEq)]
pub struct StatusNotice {
    /// Storage area, station and layer do not change with a status change.
    storage_area_id: String,
    station_name: String,
    layer_name: String,
    /// `(is_occupied, is_locked, is_disabled)` before the change.
    before: (bool, bool, bool),
    /// The same flags after it.
    after: (bool, bool, bool),
}

impl StatusNotice {
    fn fields(
        &self,
        (is_occupied, is_locked, is_disabled): (bool, bool, bool),
    ) -> FilterFields<'_> {
        FilterFields {
            storage_area_id: &self.storage_area_id,
            station_name: &self.station_name,
            layer_name: &self.layer_name,
            is_occupied,
            is_locked,
            is_disabled,
        }
    }
}

fn flags(location: &StorageLocation) -> (bool, bool, bool) {
    (
        location.is_occupied,
        location.is_locked,
        location.is_disabled,
    )
}

fn order_of(location: &StorageLocation) -> LocationOrder {
    LocationOrder {
        station_name: location.station_name.clone(),
        layer_index: location.layer_index,
        id: location.id.clone(),
    }
}

impl SceneView {
    fn insert(&mut self, location: StorageLocation) {
        self.remove(&location.id);
        let order = order_of(&location);
        self.order_of.insert(location.id.clone(), order.clone());
        self.locations.insert(order, location);
    }

    fn remove(&mut self, id: &str) {
        if let Some(order) = self.order_of.remove(id) {
            self.locations.remove(&order);
        }
    }

    fn apply_status(&mut self, new_status: &LocationStatus) -> Applied<StatusNotice> {
        let Some(location) = self
            .order_of
            .get(&new_status.id)
            .and_then(|order| self.locations.get_mut(order))
        else {
            return Applied::Ignored("unknown_location");
        };
        let before = flags(location);
        location.apply_status(new_status);
        Applied::Changed(Some(StatusNotice {
            storage_area_id: location.storage_area_id.clone(),
            station_name: location.station_name.clone(),
            layer_name: location.layer_name.clone(),
            before,
            after: flags(location),
        }))
    }
}

/// The `data` of a `storage_location_update`.
#[derive(Serialize)]
struct Page<'a> {
    total: usize,
    page: usize,
    page_size: usize,
    total_pages: usize,
    storage_locations: &'a [&'a StorageLocation],
}

impl Page<'_> {
    fn to_json(&self) -> Vec<u8> {
        // Locations are plain data: serializing them cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

fn total_pages(total: usize) -> usize {
    total.div_ceil(PAGE_SIZE).max(1)
}

/// The `storage_location_status_change` message, fields in the order of the API document.
#[derive(Serialize)]
struct StatusChangeMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    scene_id: &'a str,
    layer_name: &'a str,
    action: &'a StatusAction,
    timestamp: &'a str,
    new_status: &'a LocationStatus,
}

impl View for SceneView {
    const KIND: Kind = Kind::Scene;
    type Event = SceneEvent;
    type Snapshot = SceneSnapshot;
    type Tip = SceneTip;
    type Filter = LocationFilter;
    type Notice = StatusNotice;

    fn from_snapshot(snapshot: SceneSnapshot) -> (u64, Self) {
        let mut view = Self {
            exists: true,
            ..Self::default()
        };
        for location in snapshot.storage_locations {
            view.insert(location);
        }
        (snapshot.rev, view)
    }

    fn event_rev(event: &SceneEvent) -> u64 {
        event.rev
    }

    fn event_prev_rev(event: &SceneEvent) -> Option<u64> {
        event.prev_rev
    }

    fn tip_rev(tip: &SceneTip) -> u64 {
        tip.rev
    }

    fn exists(&self) -> bool {
        self.exists
    }

    fn apply(&mut self, event: &SceneEvent) -> Applied<StatusNotice> {
        let applied = match &event.change {
            SceneChange::StatusChange { new_status, .. } => self.apply_status(new_status),
            SceneChange::Upsert { storage_locations } => {
                for location in storage_locations {
                    self.insert(location.clone());
                }
                Applied::Changed(None)
            }
            SceneChange::Remove { ids } => {
                for id in ids {
                    self.remove(id);
                }
                Applied::Changed(None)
            }
        };
        if matches!(applied, Applied::Changed(_)) {
            self.exists = true;
        }
        applied
    }

    fn event_frames(envelope: &Envelope, event: &SceneEvent) -> Vec<Frame> {
        match &event.change {
            SceneChange::StatusChange {
                layer_name,
                action,
                timestamp,
                new_status,
            } => {
                let message = StatusChangeMessage {
                    kind: "storage_location_status_change",
                    scene_id: &event.scene_id,
                    layer_name,
                    action,
                    timestamp,
                    new_status,
                };
                match serde_json::to_string(&message) {
                    Ok(text) => vec![Frame::from(text)],
                    Err(_) => Vec::new(),
                }
            }
            SceneChange::Upsert { storage_locations } => {
                // One message holding just the changed locations, however many (SPEC 2.1).
                let mut changed: Vec<&StorageLocation> = storage_locations.iter().collect();
                changed.sort_by_cached_key(|location| order_of(location));
                let page = Page {
                    total: changed.len(),
                    page: 1,
                    page_size: changed.len().max(PAGE_SIZE),
                    total_pages: 1,
                    storage_locations: &changed,
                };
                vec![envelope.state(&page.to_json())]
            }
            SceneChange::Remove { .. } => Vec::new(),
        }
    }

    fn render(&self, filter: &LocationFilter) -> Vec<u8> {
        let mut total = 0;
        let mut first_page = Vec::new();
        for location in self.locations.values() {
            if filter.matches(location.into()) {
                total += 1;
                if first_page.len() < PAGE_SIZE {
                    first_page.push(location);
                }
            }
        }
        Page {
            total,
            page: 1,
            page_size: PAGE_SIZE,
            total_pages: total_pages(total),
            storage_locations: &first_page,
        }
        .to_json()
    }

    fn notice_reaches(notice: &StatusNotice, filter: &LocationFilter) -> bool {
        filter.matches(notice.fields(notice.before)) || filter.matches(notice.fields(notice.after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn location(id: &str, station: &str, layer_index: i64) -> StorageLocation {
        StorageLocation {
            operate_point_id: Some(format!("AP-{station}")),
            storage_location_name: Some(format!("库位{id}")),
            area_name: Some("一号库区".into()),
            goods_content: Some(String::new()),
            max_weight: Some(5000),
            updated_at: Some("2025-06-11T12:00:00.000Z".into()),
            ..StorageLocation::new("s", id, "A1", station, layer_index)
        }
    }

    fn scene(locations: Vec<StorageLocation>) -> SceneView {
        SceneView::from_snapshot(SceneSnapshot {
            scene_id: "s".into(),
            rev: 1,
            storage_locations: locations,
        })
        .1
    }

    fn rendered(view: &SceneView, filter: &LocationFilter) -> Value {
        serde_json::from_slice(&view.render(filter)).unwrap()
    }

    fn ids(page: &Value) -> Vec<String> {
        page["storage_locations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["id"].as_str().unwrap().to_owned())
            .collect()
    }

    fn status(id: &str, occupied: bool) -> SceneEvent {
        SceneEvent {
            scene_id: "s".into(),
            rev: 2,
            prev_rev: None,
            change: SceneChange::StatusChange {
                layer_name: "L".into(),
                action: StatusAction::Occupy,
                timestamp: "2025-06-11T12:00:00.000Z".into(),
                new_status: LocationStatus {
                    id: id.into(),
                    is_occupied: occupied,
                    is_locked: false,
                    is_disabled: false,
                    is_empty_tray: false,
                    locked_by: None,
                    goods_content: Some("货物".into()),
                    last_access_at: None,
                    updated_at: Some("2025-06-11T12:00:01.000Z".into()),
                },
            },
        }
    }

    #[test]
    fn renders_in_natural_station_then_layer_then_id_order() {
        let view = scene(vec![
            location("d", "S10", 1),
            location("c", "S2", 2),
            location("b", "S2", 1),
            location("a", "S1", 3),
        ]);
        let page = rendered(&view, &LocationFilter::default());
        assert_eq!(ids(&page), vec!["a", "b", "c", "d"]);
        assert_eq!(page["total"], 4);
        assert_eq!(page["page"], 1);
        assert_eq!(page["page_size"], 1000);
        assert_eq!(page["total_pages"], 1);
    }

    #[test]
    fn records_have_the_27_fields_in_document_order() {
        let view = scene(vec![location("a", "S1", 1)]);
        let text = String::from_utf8(view.render(&LocationFilter::default())).unwrap();
        let fields = [
            "id",
            "layer_index",
            "layer_name",
            "operate_point_id",
            "station_name",
            "storage_location_name",
            "scene_id",
            "storage_area_id",
            "area_name",
            "is_occupied",
            "is_locked",
            "is_disabled",
            "is_empty_tray",
            "locked_by",
            "goods_content",
            "goods_weight",
            "goods_volume",
            "goods_stored_at",
            "goods_retrieved_at",
            "last_access_at",
            "max_weight",
            "max_volume",
            "layer_height",
            "tags",
            "description",
            "created_at",
            "updated_at",
        ];
        let record: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            record["storage_locations"][0].as_object().unwrap().len(),
            27
        );
        let positions: Vec<usize> = fields
            .iter()
            .map(|f| text.find(&format!("\"{f}\":")).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn paging_counts_every_match_and_lists_the_first_thousand() {
        let many: Vec<_> = (0..2500)
            .map(|i| location(&format!("{i:05}"), "S1", i))
            .collect();
        let page = rendered(&scene(many), &LocationFilter::default());
        assert_eq!(page["total"], 2500);
        assert_eq!(page["total_pages"], 3);
        assert_eq!(page["storage_locations"].as_array().unwrap().len(), 1000);
        let empty = rendered(&scene(vec![]), &LocationFilter::default());
        assert_eq!(empty["total"], 0);
        assert_eq!(empty["total_pages"], 1);
        assert_eq!(empty["storage_locations"], json!([]));
    }

    #[test]
    fn status_changes_apply_and_notify_filters_matching_before_or_after() {
        let mut view = scene(vec![location("a", "S1", 1)]);
        let Applied::Changed(Some(notice)) = view.apply(&status("a", true)) else {
            panic!("expected a notice");
        };
        let free_only = LocationFilter {
            is_occupied: Some(false),
            ..Default::default()
        };
        let occupied_only = LocationFilter {
            is_occupied: Some(true),
            ..Default::default()
        };
        let other_area = LocationFilter {
            storage_area_id: Some("A2".into()),
            ..Default::default()
        };
        assert!(
            SceneView::notice_reaches(&notice, &free_only),
            "matched before"
        );
        assert!(
            SceneView::notice_reaches(&notice, &occupied_only),
            "matches after"
        );
        assert!(!SceneView::notice_reaches(&notice, &other_area));
        assert_eq!(ids(&rendered(&view, &occupied_only)), vec!["a"]);
        assert_eq!(ids(&rendered(&view, &free_only)), Vec::<String>::new());
        let record = &rendered(&view, &LocationFilter::default())["storage_locations"][0];
        assert_eq!(record["goods_content"], "货物");
        assert_eq!(record["updated_at"], "2025-06-11T12:00:01.000Z");
    }

    #[test]
    fn a_status_change_for_an_unknown_location_is_ignored() {
        let mut view = scene(vec![location("a", "S1", 1)]);
        assert_eq!(
            view.apply(&status("zz", true)),
            Applied::Ignored("unknown_location")
        );
    }

    #[test]
    fn upserts_move_records_and_removals_drop_them() {
        let mut view = scene(vec![location("a", "S1", 1), location("b", "S2", 1)]);
        let moved = location("a", "S3", 1);
        view.apply(&SceneEvent {
            scene_id: "s".into(),
            rev: 2,
            prev_rev: None,
            change: SceneChange::Upsert {
                storage_locations: vec![moved],
            },
        });
        assert_eq!(
            ids(&rendered(&view, &LocationFilter::default())),
            vec!["b", "a"]
        );
        view.apply(&SceneEvent {
            scene_id: "s".into(),
            rev: 3,
            prev_rev: None,
            change: SceneChange::Remove {
                ids: vec!["b".into(), "nope".into()],
            },
        });
        assert_eq!(ids(&rendered(&view, &LocationFilter::default())), vec!["a"]);
    }

    #[test]
    fn broadcast_frames() {
        let envelope = Envelope::new(Kind::Scene, "s");
        let frames = SceneView::event_frames(&envelope, &status("a", true));
        let message: Value = serde_json::from_str(frames[0].as_str()).unwrap();
        assert_eq!(message["type"], "storage_location_status_change");
        assert_eq!(message["action"], "OCCUPY");
        assert_eq!(message["new_status"]["id"], "a");
        assert_eq!(message.as_object().unwrap().len(), 6);
        let upsert = SceneEvent {
            scene_id: "s".into(),
            rev: 2,
            prev_rev: None,
            change: SceneChange::Upsert {
                storage_locations: vec![location("b", "S2", 1), location("a", "S1", 1)],
            },
        };
        let frames = SceneView::event_frames(&envelope, &upsert);
        assert_eq!(frames.len(), 1);
        let message: Value = serde_json::from_str(frames[0].as_str()).unwrap();
        assert_eq!(message["type"], "storage_location_update");
        assert_eq!(message["data"]["total"], 2);
        assert_eq!(ids(&message["data"]), vec!["a", "b"]);
        let many = SceneEvent {
            scene_id: "s".into(),
            rev: 3,
            prev_rev: None,
            change: SceneChange::Upsert {
                storage_locations: (0..1500)
                    .map(|i| location(&format!("{i:04}"), "S1", i))
                    .collect(),
            },
        };
        let frames = SceneView::event_frames(&envelope, &many);
        assert_eq!(frames.len(), 1, "one message, however many locations");
        let message: Value = serde_json::from_str(frames[0].as_str()).unwrap();
        assert_eq!(message["data"]["total"], 1500);
        assert_eq!(message["data"]["page_size"], 1500);
        assert_eq!(message["data"]["total_pages"], 1);
        assert_eq!(
            message["data"]["storage_locations"]
                .as_array()
                .unwrap()
                .len(),
            1500
        );
        let removal = SceneEvent {
            scene_id: "s".into(),
            rev: 3,
            prev_rev: None,
            change: SceneChange::Remove {
                ids: vec!["a".into()],
            },
        };
        assert!(SceneView::event_frames(&envelope, &removal).is_empty());
    }
}
