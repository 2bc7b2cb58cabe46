//! The storage-location filters of endpoint 3.

use vwed_publisher::StorageLocation;

/// What a client of endpoint 3 asked to see. Filters compare exactly and combine with AND;
/// an absent filter matches everything. Realtime clients with equal filters share renders.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LocationFilter {
    /// Only this storage area.
    pub storage_area_id: Option<String>,
    /// Only this station.
    pub station_name: Option<String>,
    /// Only this layer.
    pub layer_name: Option<String>,
    /// Only occupied (or only free) locations.
    pub is_occupied: Option<bool>,
    /// Only locked (or only unlocked) locations.
    pub is_locked: Option<bool>,
    /// Only disabled (or only enabled) locations.
    pub is_disabled: Option<bool>,
}

/// The fields of a location that filters look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterFields<'a> {
    /// Storage area id.
    pub storage_area_id: &'a str,
    /// Station name.
    pub station_name: &'a str,
    /// Layer name.
    pub layer_name: &'a str,
    /// Occupied flag.
    pub is_occupied: bool,
    /// Locked flag.
    pub is_locked: bool,
    /// Disabled flag.
    pub is_disabled: bool,
}

impl<'a> From<&'a StorageLocation> for FilterFields<'a> {
    fn from(location: &'a StorageLocation) -> Self {
        Self {
            storage_area_id: &location.storage_area_id,
            station_name: &location.station_name,
            layer_name: &location.layer_name,
            is_occupied: location.is_occupied,
            is_locked: location.is_locked,
            is_disabled: location.is_disabled,
        }
    }
}

impl LocationFilter {
    /// Whether a location with these fields passes every filter that is set.
    pub fn matches(&self, fields: FilterFields<'_>) -> bool {
        fn same<T: PartialEq + ?Sized>(wanted: Option<&T>, actual: &T) -> bool {
            wanted.is_none_or(|wanted| wanted == actual)
        }
        same(self.storage_area_id.as_deref(), fields.storage_area_id)
            && same(self.station_name.as_deref(), fields.station_name)
            && same(self.layer_name.as_deref(), fields.layer_name)
            && same(self.is_occupied.as_ref(), &fields.is_occupied)
            && same(self.is_locked.as_ref(), &fields.is_locked)
            && same(self.is_disabled.as_ref(), &fields.is_disabled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> FilterFields<'static> {
        FilterFields {
            storage_area_id: "A1",
            station_name: "S1",
            layer_name: "S1-1",
            is_occupied: true,
            is_locked: false,
            is_disabled: false,
        }
    }

    #[test]
    fn no_filter_matches_everything() {
        assert!(LocationFilter::default().matches(fields()));
    }

    #[test]
    fn each_filter_alone() {
        let cases: Vec<(LocationFilter, bool)> = vec![
            (
                LocationFilter {
                    storage_area_id: Some("A1".into()),
                    ..Default::default()
                },
                true,
            ),
            (
                LocationFilter {
                    storage_area_id: Some("a1".into()),
                    ..Default::default()
                },
                false,
            ),
            (
                LocationFilter {
                    station_name: Some("S1".into()),
                    ..Default::default()
                },
                true,
            ),
            (
                LocationFilter {
                    station_name: Some("S2".into()),
                    ..Default::default()
                },
                false,
            ),
            (
                LocationFilter {
                    layer_name: Some("S1-1".into()),
                    ..Default::default()
                },
                true,
            ),
            (
                LocationFilter {
                    layer_name: Some("S1-2".into()),
                    ..Default::default()
                },
                false,
            ),
            (
                LocationFilter {
                    is_occupied: Some(true),
                    ..Default::default()
                },
                true,
            ),
            (
                LocationFilter {
                    is_occupied: Some(false),
                    ..Default::default()
                },
                false,
            ),
            (
                LocationFilter {
                    is_locked: Some(false),
                    ..Default::default()
                },
                true,
            ),
            (
                LocationFilter {
                    is_locked: Some(true),
                    ..Default::default()
                },
                false,
            ),
            (
                LocationFilter {
                    is_disabled: Some(false),
                    ..Default::default()
                },
                true,
            ),
            (
                LocationFilter {
                    is_disabled: Some(true),
                    ..Default::default()
                },
                false,
            ),
        ];
        for (filter, expected) in cases {
            assert_eq!(filter.matches(fields()), expected, "{filter:?}");
        }
    }

    #[test]
    fn filters_combine_with_and() {
        let both = LocationFilter {
            storage_area_id: Some("A1".into()),
            is_occupied: Some(true),
            ..Default::default()
        };
        assert!(both.matches(fields()));
        let one_fails = LocationFilter {
            is_locked: Some(true),
            ..both
        };
        assert!(!one_fails.matches(fields()));
    }
}
