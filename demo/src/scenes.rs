//! The storage model of a scene: how its areas, stations and layers are laid out, how its
//! locations look when seeded, and the storage service's operations on one location (occupy,
//! release, lock, ...), each of which returns the wire change that tells of it.
//!
//! Nothing here publishes or waits: the simulation mutates a [`SceneState`] and hands the
//! returned [`SceneOp`]s to the engine, which publishes them in order. That keeps every rule
//! about consistent state testable without a broker.

use std::time::{Duration, SystemTime};

use fastrand::Rng;
use vwed_publisher::wire::timestamp_at;
use vwed_publisher::{LocationStatus, StatusAction, StorageLocation};

/// Scenes are seeded from this plus their index, so a restarted demo shows the same layout and
/// the same starting state: a hub that still holds the previous run's records is then only
/// out of date in what the simulation changed since, which the start-up upsert replaces anyway.
const LAYOUT_SEED: u64 = 0x5644_4544_2d44_454d;

/// Fewest and most locations a scene has, so that every scene fills a monitoring page
/// without making a snapshot (one JSON message) unwieldy.
pub(crate) const MIN_LOCATIONS: usize = 200;
/// See [`MIN_LOCATIONS`].
pub(crate) const MAX_LOCATIONS: usize = 500;

/// One change to a scene, in the form it takes on the wire.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SceneOp {
    /// A location's status fields changed (`storage_location_status_change` for clients).
    Status {
        /// The location's layer name: the status change names its location by it.
        layer_name: String,
        /// What the storage service did.
        action: StatusAction,
        /// The location's status after the change, absolute as the contract asks.
        status: LocationStatus,
    },
    /// Whole records changed. A status change carries only the status fields, so when goods
    /// come or go their weight, volume and times reach watchers through this instead; without
    /// it a hub's event-fed copy would disagree with our snapshot at the same rev.
    Upsert(Vec<StorageLocation>),
}

/// What kind of rack an area holds; it decides a location's capacity, height, tags and goods.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AreaKind {
    /// Shown in area names ("A区 高位货架"), as operators name areas after their racks.
    pub(crate) label: &'static str,
    /// Layers per station: tall racks have more levels than floor buffers.
    pub(crate) layers: i64,
    /// Load limit per layer in grams; goods placed there never weigh more.
    pub(crate) max_weight: i64,
    /// Volume limit per layer in cubic centimetres; goods placed there are never bigger.
    pub(crate) max_volume: i64,
    /// Layer height in millimetres, a field panels show.
    pub(crate) layer_height: i64,
    /// Tags as the API carries them (comma-separated), so tag filters on panels have data.
    pub(crate) tags: &'static str,
    /// (packaging, product) pairs this kind of rack stores, so goods look like they belong.
    pub(crate) goods: &'static [(&'static str, &'static str)],
}

/// Goods for dry racks.
const DRY_GOODS: &[(&str, &str)] = &[
    ("纸箱", "洗衣液"),
    ("纸箱", "矿泉水"),
    ("纸箱", "餐巾纸"),
    ("托盘", "A4复印纸"),
    ("托盘", "大米"),
    ("周转箱", "电子元件"),
    ("周转箱", "螺丝紧固件"),
    ("木箱", "机械配件"),
];

/// Goods for chilled and frozen racks.
const COLD_GOODS: &[(&str, &str)] = &[
    ("冷藏箱", "鲜牛奶"),
    ("冷藏箱", "酸奶"),
    ("冷藏箱", "鸡蛋"),
    ("冷冻箱", "速冻水饺"),
    ("冷冻箱", "冷冻虾仁"),
    ("泡沫箱", "三文鱼"),
];

/// Pallet racks, five levels.
pub(crate) const HIGH_BAY: AreaKind = AreaKind {
    label: "高位货架",
    layers: 5,
    max_weight: 1_000_000,
    max_volume: 1_728_000,
    layer_height: 1500,
    tags: "高位,托盘",
    goods: DRY_GOODS,
};
/// Box shelves, four levels.
pub(crate) const MEDIUM: AreaKind = AreaKind {
    label: "中型货架",
    layers: 4,
    max_weight: 300_000,
    max_volume: 512_000,
    layer_height: 1000,
    tags: "中型,箱装",
    goods: DRY_GOODS,
};
/// Picking shelves, four low levels.
pub(crate) const LIGHT: AreaKind = AreaKind {
    label: "轻型货架",
    layers: 4,
    max_weight: 50_000,
    max_volume: 120_000,
    layer_height: 500,
    tags: "轻型,拣选",
    goods: DRY_GOODS,
};
/// Floor positions at the docks, two levels of stacked pallets.
pub(crate) const BUFFER: AreaKind = AreaKind {
    label: "出入库缓存区",
    layers: 2,
    max_weight: 1_000_000,
    max_volume: 1_728_000,
    layer_height: 1800,
    tags: "缓存,出入库",
    goods: DRY_GOODS,
};
/// Chilled racks (0~4℃).
pub(crate) const CHILLED: AreaKind = AreaKind {
    label: "冷藏货架",
    layers: 4,
    max_weight: 500_000,
    max_volume: 1_000_000,
    layer_height: 1200,
    tags: "冷藏,0~4℃",
    goods: COLD_GOODS,
};
/// Frozen racks (-18℃).
pub(crate) const FROZEN: AreaKind = AreaKind {
    label: "冷冻货架",
    layers: 5,
    max_weight: 500_000,
    max_volume: 1_000_000,
    layer_height: 1200,
    tags: "冷冻,-18℃",
    goods: COLD_GOODS,
};
/// The cold store's dock buffer.
pub(crate) const COLD_BUFFER: AreaKind = AreaKind {
    label: "冷链缓存区",
    layers: 2,
    max_weight: 1_000_000,
    max_volume: 1_728_000,
    layer_height: 1800,
    tags: "缓存,冷链",
    goods: COLD_GOODS,
};

/// One storage area of a layout.
#[derive(Debug, Clone)]
pub(crate) struct AreaLayout {
    /// Area id, a capital letter, which also starts its station names.
    pub(crate) id: String,
    /// The racks it holds.
    pub(crate) kind: &'static AreaKind,
    /// How many stations (rack columns) it has.
    pub(crate) stations: usize,
}

/// How a scene is built: its areas and the size of its AGV fleet.
#[derive(Debug, Clone)]
pub(crate) struct SceneLayout {
    /// The scene id clients subscribe to.
    pub(crate) scene_id: String,
    /// Areas in id order.
    pub(crate) areas: Vec<AreaLayout>,
    /// AGVs serving the scene; tasks take idle ones so that one AGV never runs two jobs.
    pub(crate) fleet_size: usize,
}

impl SceneLayout {
    /// How many locations the layout makes.
    pub(crate) fn location_count(&self) -> usize {
        self.areas
            .iter()
            .map(|a| a.stations * a.kind.layers as usize)
            .sum()
    }
}

/// The id of the scene at `index`: three named ones, then numbered warehouses.
pub(crate) fn scene_id(index: usize) -> String {
    match index {
        0 => "warehouse-north".to_owned(),
        1 => "warehouse-south".to_owned(),
        2 => "cold-store".to_owned(),
        n => format!("warehouse-{}", n + 1),
    }
}

/// The layout of the scene at `index`. The named scenes are hand-made so that they differ in
/// size and character; numbered ones are drawn from a seed and fitted into the size bounds.
pub(crate) fn layout(index: usize) -> SceneLayout {
    let area = |id: &str, kind: &'static AreaKind, stations: usize| AreaLayout {
        id: id.to_owned(),
        kind,
        stations,
    };
    let (areas, fleet_size) = match index {
        0 => (
            vec![
                area("A", &HIGH_BAY, 12),
                area("B", &HIGH_BAY, 12),
                area("C", &MEDIUM, 14),
                area("D", &LIGHT, 10),
                area("E", &BUFFER, 12),
            ],
            10,
        ),
        1 => (
            vec![
                area("A", &HIGH_BAY, 16),
                area("B", &HIGH_BAY, 16),
                area("C", &HIGH_BAY, 14),
                area("D", &MEDIUM, 20),
                area("E", &BUFFER, 16),
            ],
            14,
        ),
        2 => (
            vec![
                area("A", &CHILLED, 16),
                area("B", &CHILLED, 16),
                area("C", &FROZEN, 12),
                area("D", &FROZEN, 12),
                area("E", &COLD_BUFFER, 10),
            ],
            8,
        ),
        _ => return numbered_layout(index),
    };
    SceneLayout {
        scene_id: scene_id(index),
        areas,
        fleet_size,
    }
}

/// A drawn layout for scenes past the named ones, adjusted into the size bounds.
fn numbered_layout(index: usize) -> SceneLayout {
    const KINDS: [&AreaKind; 4] = [&HIGH_BAY, &MEDIUM, &LIGHT, &BUFFER];
    let mut rng = Rng::with_seed(LAYOUT_SEED ^ (index as u64).wrapping_mul(0x9E37_79B9));
    let mut areas: Vec<AreaLayout> = (0..rng.usize(3..=6))
        .map(|n| AreaLayout {
            id: char::from(b'A' + n as u8).to_string(),
            kind: KINDS[rng.usize(..KINDS.len())],
            stations: rng.usize(6..=16),
        })
        .collect();
    let mut layout = SceneLayout {
        scene_id: scene_id(index),
        areas: Vec::new(),
        fleet_size: rng.usize(6..=14),
    };
    // Growing one station at a time and shrinking the largest area keeps the areas
    // recognisable while landing inside the bounds (each step moves by at most 5 locations,
    // and the bounds are 300 apart).
    let count = |areas: &[AreaLayout]| -> usize {
        areas
            .iter()
            .map(|a| a.stations * a.kind.layers as usize)
            .sum()
    };
    while count(&areas) < MIN_LOCATIONS {
        let n = rng.usize(..areas.len());
        areas[n].stations += 1;
    }
    while count(&areas) > MAX_LOCATIONS {
        if let Some(largest) = areas.iter_mut().max_by_key(|a| a.stations) {
            largest.stations -= 1;
        }
    }
    layout.areas = areas;
    layout
}

/// Goods on a location: what a task carries from its source to its destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Goods {
    /// The description (`goods_content`), e.g. "纸箱 洗衣液 SKU-10234".
    pub(crate) content: String,
    /// Weight in grams, never above the holding location's `max_weight`.
    pub(crate) weight: i64,
    /// Volume in cubic centimetres.
    pub(crate) volume: i64,
}

/// Goods that fit a location of `kind`.
pub(crate) fn random_goods(kind: &AreaKind, rng: &mut Rng) -> Goods {
    let (packaging, product) = kind.goods[rng.usize(..kind.goods.len())];
    Goods {
        content: format!("{packaging} {product} SKU-{}", rng.u32(10_000..100_000)),
        weight: rng.i64(kind.max_weight / 5..=kind.max_weight * 9 / 10),
        volume: rng.i64(kind.max_volume / 4..=kind.max_volume * 9 / 10),
    }
}

/// One scene's locations and fleet, as the storage service holds them.
#[derive(Debug, Clone)]
pub(crate) struct SceneState {
    /// The scene id, the key of every event and snapshot of this scene.
    pub(crate) scene_id: String,
    /// Every location, in layout order (area, station, layer), which is also the natural
    /// order clients sort by.
    pub(crate) locations: Vec<StorageLocation>,
    /// The rack kind of each location (same index), to draw goods that fit it.
    kinds: Vec<&'static AreaKind>,
    /// AGV names; a task names its AGV in its results.
    fleet: Vec<String>,
    /// Which AGVs (same index) are on a job, so that concurrent tasks use different ones.
    busy: Vec<bool>,
}

/// Builds and seeds the scene at `index` as of `now`.
pub(crate) fn seed_scene(index: usize, now: SystemTime) -> SceneState {
    let layout = layout(index);
    let mut rng = Rng::with_seed(LAYOUT_SEED.wrapping_add(index as u64));
    let hours_ago = |rng: &mut Rng, from: u64, to: u64| {
        timestamp_at(now - Duration::from_secs(rng.u64(from * 3600..to * 3600)))
    };
    // The scene went live some months ago; its records were created then.
    let created_at = hours_ago(&mut rng, 90 * 24, 400 * 24);
    let mut locations = Vec::with_capacity(layout.location_count());
    let mut kinds = Vec::with_capacity(layout.location_count());
    for area in &layout.areas {
        let kind = area.kind;
        let area_name = format!("{}区 {}", area.id, kind.label);
        for station_number in 1..=area.stations {
            let station_name = format!("{}-{station_number:02}", area.id);
            for layer_index in 1..=kind.layers {
                let layer_name = format!("{station_name}-L{layer_index}");
                let mut location = StorageLocation {
                    layer_name: layer_name.clone(),
                    operate_point_id: Some(format!("AP-{station_name}")),
                    storage_location_name: Some(format!(
                        "{}区{station_number:02}号货位 第{layer_index}层",
                        area.id
                    )),
                    area_name: Some(area_name.clone()),
                    goods_content: Some(String::new()),
                    max_weight: Some(kind.max_weight),
                    max_volume: Some(kind.max_volume),
                    layer_height: Some(kind.layer_height),
                    tags: Some(if station_number <= 2 {
                        format!("{},近出口", kind.tags)
                    } else {
                        kind.tags.to_owned()
                    }),
                    description: (layer_index == 1)
                        .then(|| format!("{area_name} {station_name} 底层, 叉车可达")),
                    created_at: Some(created_at.clone()),
                    ..StorageLocation::new(
                        &layout.scene_id,
                        format!("{}/{layer_name}", layout.scene_id),
                        &area.id,
                        &station_name,
                        layer_index,
                    )
                };
                let last_access = hours_ago(&mut rng, 1, 72);
                if rng.f64() < 0.5 {
                    let goods = random_goods(kind, &mut rng);
                    location.is_occupied = true;
                    location.goods_content = Some(goods.content);
                    location.goods_weight = Some(goods.weight);
                    location.goods_volume = Some(goods.volume);
                    location.goods_stored_at = Some(last_access.clone());
                } else {
                    location.is_empty_tray = rng.f64() < 0.12;
                    location.goods_retrieved_at =
                        (rng.f64() < 0.6).then(|| hours_ago(&mut rng, 72, 240));
                }
                if rng.f64() < 0.03 {
                    location.is_disabled = true;
                } else if rng.f64() < 0.02 {
                    location.is_locked = true;
                    location.locked_by = Some(MANUAL_LOCKERS[0].to_owned());
                }
                location.last_access_at = Some(last_access.clone());
                location.updated_at = Some(last_access);
                locations.push(location);
                kinds.push(kind);
            }
        }
    }
    let fleet: Vec<String> = (1..=layout.fleet_size)
        .map(|n| format!("AGV-{n:02}"))
        .collect();
    SceneState {
        scene_id: layout.scene_id,
        locations,
        kinds,
        busy: vec![false; fleet.len()],
        fleet,
    }
}

/// Who besides tasks locks locations: stock counts, maintenance, quality checks. Tasks lock
/// with their record id; background changes only ever unlock these, never a task's lock.
pub(crate) const MANUAL_LOCKERS: [&str; 3] = ["WMS-盘点", "运维-货架检修", "质检-抽检"];

/// Whether the location holds no goods and nothing stands in the way of putting some there.
pub(crate) fn can_take_goods(location: &StorageLocation) -> bool {
    !location.is_occupied && !location.is_locked && !location.is_disabled
}

/// Whether the location holds goods that could be taken out now.
pub(crate) fn can_give_goods(location: &StorageLocation) -> bool {
    location.is_occupied && !location.is_locked && !location.is_disabled
}

impl SceneState {
    /// The rack kind of the location at `index`.
    pub(crate) fn kind(&self, index: usize) -> &'static AreaKind {
        self.kinds[index]
    }

    /// The full record of the location at `index`, for an upsert.
    pub(crate) fn record(&self, index: usize) -> StorageLocation {
        self.locations[index].clone()
    }

    /// The goods at `index` as its record describes them (None when it holds none).
    pub(crate) fn goods_at(&self, index: usize) -> Option<Goods> {
        let location = &self.locations[index];
        if !location.is_occupied {
            return None;
        }
        Some(Goods {
            content: location.goods_content.clone().unwrap_or_default(),
            weight: location.goods_weight.unwrap_or_default(),
            volume: location.goods_volume.unwrap_or_default(),
        })
    }

    /// Takes an idle AGV for a job (any AGV when all are busy, as a real dispatcher would
    /// queue the job rather than refuse it).
    pub(crate) fn assign_agv(&mut self, rng: &mut Rng) -> String {
        let idle: Vec<usize> = (0..self.fleet.len()).filter(|&n| !self.busy[n]).collect();
        let n = if idle.is_empty() {
            rng.usize(..self.fleet.len().max(1))
        } else {
            idle[rng.usize(..idle.len())]
        };
        match self.fleet.get(n) {
            Some(agv) => {
                self.busy[n] = true;
                agv.clone()
            }
            None => "AGV-01".to_owned(),
        }
    }

    /// Returns an AGV to the idle pool.
    pub(crate) fn release_agv(&mut self, agv: &str) {
        if let Some(n) = self.fleet.iter().position(|a| a == agv) {
            self.busy[n] = false;
        }
    }

    /// Changes the location at `index` with `edit`, stamps it `now` and returns the status
    /// change that tells of it.
    fn change(
        &mut self,
        index: usize,
        action: StatusAction,
        now: &str,
        edit: impl FnOnce(&mut StorageLocation),
    ) -> SceneOp {
        let location = &mut self.locations[index];
        edit(location);
        location.last_access_at = Some(now.to_owned());
        location.updated_at = Some(now.to_owned());
        SceneOp::Status {
            layer_name: location.layer_name.clone(),
            action,
            status: location.status(),
        }
    }

    /// Puts `goods` on the location. The caller checks it may (free, enabled, and unlocked
    /// or locked by the caller).
    pub(crate) fn occupy(&mut self, index: usize, goods: Goods, now: &str) -> SceneOp {
        self.change(index, StatusAction::Occupy, now, |l| {
            l.is_occupied = true;
            // Goods stand on the tray now, so it is no longer an empty one.
            l.is_empty_tray = false;
            l.goods_content = Some(goods.content);
            l.goods_weight = Some(goods.weight);
            l.goods_volume = Some(goods.volume);
            l.goods_stored_at = Some(now.to_owned());
        })
    }

    /// Takes the goods off the location. The caller checks it may.
    pub(crate) fn release(&mut self, index: usize, now: &str) -> SceneOp {
        self.change(index, StatusAction::Release, now, |l| {
            l.is_occupied = false;
            l.goods_content = Some(String::new());
            l.goods_weight = None;
            l.goods_volume = None;
            l.goods_stored_at = None;
            l.goods_retrieved_at = Some(now.to_owned());
        })
    }

    /// Locks the location for `holder` (a task record id or a [`MANUAL_LOCKERS`] name).
    pub(crate) fn lock(&mut self, index: usize, holder: &str, now: &str) -> SceneOp {
        self.change(index, StatusAction::Lock, now, |l| {
            l.is_locked = true;
            l.locked_by = Some(holder.to_owned());
        })
    }

    /// Unlocks the location.
    pub(crate) fn unlock(&mut self, index: usize, now: &str) -> SceneOp {
        self.change(index, StatusAction::Unlock, now, |l| {
            l.is_locked = false;
            l.locked_by = None;
        })
    }

    /// Disables the location (e.g. a damaged beam).
    pub(crate) fn disable(&mut self, index: usize, now: &str) -> SceneOp {
        self.change(index, StatusAction::Disable, now, |l| l.is_disabled = true)
    }

    /// Enables the location again.
    pub(crate) fn enable(&mut self, index: usize, now: &str) -> SceneOp {
        self.change(index, StatusAction::Enable, now, |l| l.is_disabled = false)
    }

    /// Records an empty tray on a free location.
    pub(crate) fn set_empty_tray(&mut self, index: usize, now: &str) -> SceneOp {
        self.change(index, StatusAction::SetEmptyTray, now, |l| {
            l.is_empty_tray = true
        })
    }

    /// Clears the empty-tray mark (the tray was taken away).
    pub(crate) fn clear_empty_tray(&mut self, index: usize, now: &str) -> SceneOp {
        self.change(index, StatusAction::ClearEmptyTray, now, |l| {
            l.is_empty_tray = false
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cmp::Ordering;
    use std::collections::HashSet;

    use super::*;

    /// Natural order as the hub sorts station names: digit runs compare as numbers.
    fn natural_cmp(a: &str, b: &str) -> Ordering {
        fn chunks(s: &str) -> Vec<(bool, String)> {
            let mut out: Vec<(bool, String)> = Vec::new();
            for c in s.chars() {
                let digit = c.is_ascii_digit();
                match out.last_mut() {
                    Some((d, run)) if *d == digit => run.push(c),
                    _ => out.push((digit, c.to_string())),
                }
            }
            out
        }
        for (x, y) in chunks(a).iter().zip(chunks(b).iter()) {
            let order = match (x, y) {
                ((true, x), (true, y)) => x
                    .parse::<u64>()
                    .unwrap_or(0)
                    .cmp(&y.parse::<u64>().unwrap_or(0)),
                ((_, x), (_, y)) => x.cmp(y),
            };
            if order != Ordering::Equal {
                return order;
            }
        }
        chunks(a).len().cmp(&chunks(b).len())
    }

    /// Checks the rules every location must keep, whatever happened to it.
    pub(crate) fn assert_consistent(scene: &SceneState) {
        for l in &scene.locations {
            let goods = l.goods_content.as_deref().unwrap_or_default();
            assert_eq!(l.is_occupied, !goods.is_empty(), "{l:?}");
            assert_eq!(l.is_occupied, l.goods_weight.is_some(), "{l:?}");
            assert_eq!(l.is_locked, l.locked_by.is_some(), "{l:?}");
            assert!(!(l.is_occupied && l.is_empty_tray), "{l:?}");
            if let (Some(weight), Some(max)) = (l.goods_weight, l.max_weight) {
                assert!(weight <= max, "{l:?}");
            }
            assert_eq!(l.scene_id, scene.scene_id);
            assert!(l.updated_at.is_some() && l.last_access_at.is_some());
        }
    }

    #[test]
    fn scenes_have_distinct_ids_and_sizes_within_bounds() {
        let now = SystemTime::now();
        let scenes: Vec<SceneState> = (0..12).map(|n| seed_scene(n, now)).collect();
        let ids: HashSet<&str> = scenes.iter().map(|s| s.scene_id.as_str()).collect();
        assert_eq!(ids.len(), scenes.len());
        assert_eq!(scenes[0].scene_id, "warehouse-north");
        assert_eq!(scenes[2].scene_id, "cold-store");
        for scene in &scenes {
            let count = scene.locations.len();
            assert!(
                (MIN_LOCATIONS..=MAX_LOCATIONS).contains(&count),
                "{} has {count}",
                scene.scene_id
            );
            assert_eq!(count, layout_of(&scene.scene_id).location_count());
        }
        let sizes: HashSet<usize> = scenes[..3].iter().map(|s| s.locations.len()).collect();
        assert_eq!(sizes.len(), 3, "the named scenes differ in size");
    }

    fn layout_of(scene_id: &str) -> SceneLayout {
        (0..100)
            .map(layout)
            .find(|l| l.scene_id == scene_id)
            .expect("a known scene")
    }

    #[test]
    fn location_ids_and_layer_names_are_unique_and_consistent() {
        for n in 0..6 {
            let scene = seed_scene(n, SystemTime::now());
            let ids: HashSet<&str> = scene.locations.iter().map(|l| l.id.as_str()).collect();
            let layers: HashSet<&str> = scene
                .locations
                .iter()
                .map(|l| l.layer_name.as_str())
                .collect();
            assert_eq!(ids.len(), scene.locations.len());
            assert_eq!(layers.len(), scene.locations.len());
            for l in &scene.locations {
                assert!(l.layer_name.starts_with(&l.station_name));
                assert!(l.station_name.starts_with(&l.storage_area_id));
                assert_eq!(
                    l.layer_name,
                    format!("{}-L{}", l.station_name, l.layer_index)
                );
                assert!(l.area_name.as_deref().unwrap_or_default().contains('区'));
            }
            assert_consistent(&scene);
        }
    }

    #[test]
    fn station_names_sort_naturally_in_layout_order() {
        let scene = seed_scene(1, SystemTime::now());
        let in_layout_order: Vec<(&str, i64)> = scene
            .locations
            .iter()
            .map(|l| (l.station_name.as_str(), l.layer_index))
            .collect();
        let mut sorted = in_layout_order.clone();
        sorted.sort_by(|a, b| natural_cmp(a.0, b.0).then(a.1.cmp(&b.1)));
        assert_eq!(sorted, in_layout_order);
        // Zero-padded numbers also sort right for clients that compare plain strings.
        let mut plain = in_layout_order.clone();
        plain.sort();
        assert_eq!(plain, in_layout_order);
        assert!(natural_cmp("A-2", "A-10").is_lt());
    }

    #[test]
    fn seeded_scenes_look_like_a_working_warehouse() {
        let scene = seed_scene(0, SystemTime::now());
        let total = scene.locations.len() as f64;
        let share = |f: fn(&StorageLocation) -> bool| {
            scene.locations.iter().filter(|l| f(l)).count() as f64 / total
        };
        let occupied = share(|l| l.is_occupied);
        assert!((0.35..0.65).contains(&occupied), "{occupied}");
        assert!(share(|l| l.is_disabled) < 0.08);
        assert!(share(|l| l.is_disabled) > 0.0);
        assert!(share(|l| l.is_empty_tray) > 0.0);
        // The same index seeds the same scene, so a restarted demo looks the same.
        let again = seed_scene(0, SystemTime::now());
        let statuses = |s: &SceneState| -> Vec<(bool, bool, bool)> {
            s.locations
                .iter()
                .map(|l| (l.is_occupied, l.is_disabled, l.is_locked))
                .collect()
        };
        assert_eq!(statuses(&scene), statuses(&again));
    }

    #[test]
    fn occupy_and_release_move_goods_details_with_the_status() {
        let mut scene = seed_scene(0, SystemTime::now());
        let index = scene
            .locations
            .iter()
            .position(can_take_goods)
            .expect("a free location");
        let goods = random_goods(scene.kind(index), &mut Rng::with_seed(1));
        let op = scene.occupy(index, goods.clone(), "2025-06-11T12:00:00.000Z");
        let SceneOp::Status { action, status, .. } = op else {
            panic!("a status change")
        };
        assert_eq!(action, StatusAction::Occupy);
        assert!(status.is_occupied);
        assert_eq!(
            status.goods_content.as_deref(),
            Some(goods.content.as_str())
        );
        assert_eq!(scene.goods_at(index), Some(goods));
        scene.release(index, "2025-06-11T12:00:01.000Z");
        assert_eq!(scene.goods_at(index), None);
        assert_consistent(&scene);
    }

    #[test]
    fn agvs_are_not_given_two_jobs_while_idle_ones_remain() {
        let mut scene = seed_scene(2, SystemTime::now());
        let mut rng = Rng::with_seed(3);
        let taken: HashSet<String> = (0..scene.fleet.len())
            .map(|_| scene.assign_agv(&mut rng))
            .collect();
        assert_eq!(taken.len(), scene.fleet.len());
        scene.release_agv("AGV-02");
        assert_eq!(scene.assign_agv(&mut rng), "AGV-02");
    }
}
