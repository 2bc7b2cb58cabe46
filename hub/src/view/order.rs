//! The order storage locations are listed in: `station_name` in natural order (numbers compared
//! as numbers), then `layer_index`, then `id` (SPEC 2.1).

use std::cmp::Ordering;

/// A location's place in the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocationOrder {
    /// Compared naturally, so `S2` comes before `S10`.
    pub station_name: String,
    /// Compared as a number.
    pub layer_index: i64,
    /// Breaks ties, so that the order is total and stable.
    pub id: String,
}

impl Ord for LocationOrder {
    fn cmp(&self, other: &Self) -> Ordering {
        natural_cmp(&self.station_name, &other.station_name)
            .then(self.layer_index.cmp(&other.layer_index))
            .then_with(|| self.id.cmp(&other.id))
    }
}

impl PartialOrd for LocationOrder {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Compares two strings with runs of ASCII digits compared by their numeric value.
///
/// Equal numbers with different leading zeros (`7` and `007`) order by length, and everything
/// else compares by `char`, so the order is total and agrees with `==`.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a, b);
    loop {
        match (a.chars().next(), b.chars().next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (run_a, rest_a) = split_digits(a);
                let (run_b, rest_b) = split_digits(b);
                let order = compare_numbers(run_a, run_b);
                if order != Ordering::Equal {
                    return order;
                }
                (a, b) = (rest_a, rest_b);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(&y);
                }
                (a, b) = (&a[x.len_utf8()..], &b[y.len_utf8()..]);
            }
        }
    }
}

fn split_digits(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(end)
}

/// Compares digit runs of any length without parsing them (so no overflow).
fn compare_numbers(a: &str, b: &str) -> Ordering {
    let (sig_a, sig_b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    sig_a
        .len()
        .cmp(&sig_b.len())
        .then_with(|| sig_a.cmp(sig_b))
        .then_with(|| a.len().cmp(&b.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut names: Vec<&str>) -> Vec<&str> {
        names.sort_by(|a, b| natural_cmp(a, b));
        names
    }

    #[test]
    fn numbers_compare_as_numbers() {
        assert_eq!(
            sorted(vec!["S10", "S2", "S1", "S-3", "S02", "AP100", "AP99", "B"]),
            vec!["AP99", "AP100", "B", "S-3", "S1", "S2", "S02", "S10"]
        );
        assert_eq!(
            sorted(vec!["10-2", "10-10", "9-30", "10-1"]),
            vec!["9-30", "10-1", "10-2", "10-10"]
        );
    }

    #[test]
    fn huge_numbers_and_unicode_do_not_break_it() {
        let big = "S99999999999999999999999999999";
        assert_eq!(natural_cmp(big, "S100"), Ordering::Greater);
        assert_eq!(natural_cmp("库位2", "库位10"), Ordering::Less);
        assert_eq!(natural_cmp("", "a"), Ordering::Less);
        assert_eq!(natural_cmp("abc", "abc"), Ordering::Equal);
    }

    #[test]
    fn order_is_total_and_consistent_with_equality() {
        let names = ["7", "07", "007", "a7", "a07", "", "a", "7a", "07a"];
        for a in names {
            for b in names {
                assert_eq!(natural_cmp(a, b) == Ordering::Equal, a == b, "{a} {b}");
                assert_eq!(natural_cmp(a, b), natural_cmp(b, a).reverse(), "{a} {b}");
            }
        }
    }

    #[test]
    fn station_then_layer_then_id() {
        let at = |station: &str, layer, id: &str| LocationOrder {
            station_name: station.into(),
            layer_index: layer,
            id: id.into(),
        };
        let mut list = [
            at("S10", 1, "a"),
            at("S2", 2, "b"),
            at("S2", 1, "z"),
            at("S2", 1, "c"),
        ];
        list.sort();
        let ids: Vec<&str> = list.iter().map(|o| o.id.as_str()).collect();
        assert_eq!(ids, vec!["c", "z", "b", "a"]);
    }
}
