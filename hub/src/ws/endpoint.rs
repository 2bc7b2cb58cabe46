//! The four endpoints, and the validation of their path ids and query parameters (SPEC 2.3).

use std::time::Duration;

use percent_encoding::percent_decode_str;
use vwed_publisher::subject::{validate_id, InvalidId};

use crate::messages::Kind;
use crate::view::LocationFilter;

/// Longest id accepted, in bytes of UTF-8: the SDK's limit, so that the hub serves exactly the
/// ids its publishers may publish under.
pub use vwed_publisher::subject::MAX_ID_BYTES;

/// Longest piece of a bad value echoed back in an error message.
const MAX_ECHO_CHARS: usize = 64;

/// One of the four WebSocket endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/ws/task-execution/{task_record_id}`
    TaskRealtime,
    /// `/ws/task-execution-broadcast/{task_record_id}`
    TaskBroadcast,
    /// `/ws/storage-location/{scene_id}`
    SceneRealtime,
    /// `/ws/storage-location-broadcast/{scene_id}`
    SceneBroadcast,
}

impl Endpoint {
    /// Every endpoint, e.g. to pre-create metric series.
    pub const ALL: [Endpoint; 4] = [
        Endpoint::TaskRealtime,
        Endpoint::TaskBroadcast,
        Endpoint::SceneRealtime,
        Endpoint::SceneBroadcast,
    ];

    /// The endpoint whose path segment after `/ws/` is `segment`.
    pub fn from_segment(segment: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.segment() == segment)
    }

    /// The path segment after `/ws/`; also the endpoint's metric label.
    pub fn segment(self) -> &'static str {
        match self {
            Endpoint::TaskRealtime => "task-execution",
            Endpoint::TaskBroadcast => "task-execution-broadcast",
            Endpoint::SceneRealtime => "storage-location",
            Endpoint::SceneBroadcast => "storage-location-broadcast",
        }
    }

    /// Which kind of key the endpoint watches.
    pub fn kind(self) -> Kind {
        match self {
            Endpoint::TaskRealtime | Endpoint::TaskBroadcast => Kind::Task,
            Endpoint::SceneRealtime | Endpoint::SceneBroadcast => Kind::Scene,
        }
    }

    /// The default `interval` of a realtime endpoint; `None` for broadcast endpoints.
    fn default_interval(self) -> Option<u64> {
        match self {
            Endpoint::TaskRealtime => Some(2),
            Endpoint::SceneRealtime => Some(3),
            Endpoint::TaskBroadcast | Endpoint::SceneBroadcast => None,
        }
    }
}

/// What a valid connection request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// The task record id or scene id, percent-decoded.
    pub id: String,
    /// For realtime endpoints, the interval; `None` on broadcast endpoints.
    pub interval: Option<Duration>,
    /// For endpoint 3, the location filter; default (everything) elsewhere.
    pub filter: LocationFilter,
}

/// A request that cannot be served: the client gets one `error` with this text, then 1008.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    /// The id is empty.
    #[error("{0} 不能为空")]
    EmptyId(&'static str),
    /// The id is over [`MAX_ID_BYTES`].
    #[error("{0} 过长: 最多 {MAX_ID_BYTES} 字节")]
    IdTooLong(&'static str),
    /// The id holds a control character.
    #[error("{0} 不能包含控制字符")]
    IdControlCharacter(&'static str),
    /// The id's percent-encoding is not UTF-8.
    #[error("{0} 不是有效的 UTF-8 编码")]
    IdNotUtf8(&'static str),
    /// `interval` is not an integer in 1..=30.
    #[error("参数 interval 无效: \"{0}\",必须是 1 到 30 之间的整数")]
    Interval(String),
    /// A boolean filter is not true/false/1/0.
    #[error("参数 {0} 无效: \"{1}\",允许的值为 true、false、1、0(不区分大小写)")]
    Boolean(&'static str, String),
    /// A parameter appears twice.
    #[error("参数 {0} 重复,只能出现一次")]
    Repeated(&'static str),
    /// A string filter is over [`MAX_ID_BYTES`]: no location field it compares with is longer
    /// (they are ids and names), and each distinct filter costs the hub a group of its own.
    #[error("参数 {0} 过长: 最多 {MAX_ID_BYTES} 字节")]
    FilterTooLong(&'static str),
}

/// Parses a realtime or broadcast request: the raw (still percent-encoded) id from the path and
/// the raw query string.
pub fn parse(
    endpoint: Endpoint,
    raw_id: &str,
    query: Option<&str>,
) -> Result<Watch, InvalidRequest> {
    let id = parse_id(endpoint.kind().id_field(), raw_id)?;
    let mut watch = Watch {
        endpoint,
        id,
        interval: endpoint.default_interval().map(Duration::from_secs),
        filter: LocationFilter::default(),
    };
    // Broadcast endpoints take no parameters; anything there is ignored, like unknown ones.
    if watch.interval.is_none() {
        return Ok(watch);
    }
    let mut seen: Vec<&'static str> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let Some(name) = known_parameter(endpoint, &name) else {
            continue;
        };
        if seen.contains(&name) {
            return Err(InvalidRequest::Repeated(name));
        }
        seen.push(name);
        let filter = &mut watch.filter;
        match name {
            "interval" => watch.interval = Some(parse_interval(&value)?),
            "storage_area_id" => filter.storage_area_id = string_filter(name, &value)?,
            "station_name" => filter.station_name = string_filter(name, &value)?,
            "layer_name" => filter.layer_name = string_filter(name, &value)?,
            "is_occupied" => filter.is_occupied = parse_bool(name, &value)?,
            "is_locked" => filter.is_locked = parse_bool(name, &value)?,
            "is_disabled" => filter.is_disabled = parse_bool(name, &value)?,
            _ => {}
        }
    }
    Ok(watch)
}

fn known_parameter(endpoint: Endpoint, name: &str) -> Option<&'static str> {
    const TASK: &[&str] = &["interval"];
    const SCENE: &[&str] = &[
        "interval",
        "storage_area_id",
        "station_name",
        "layer_name",
        "is_occupied",
        "is_locked",
        "is_disabled",
    ];
    let known = match endpoint.kind() {
        Kind::Task => TASK,
        Kind::Scene => SCENE,
    };
    known.iter().copied().find(|k| *k == name)
}

/// Percent-decodes a path id and validates it with the SDK's rules ([`validate_id`]), the ones
/// publishers are held to.
pub fn parse_id(field: &'static str, raw: &str) -> Result<String, InvalidRequest> {
    let id = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| InvalidRequest::IdNotUtf8(field))?;
    validate_id(&id).map_err(|invalid| match invalid {
        InvalidId::Empty => InvalidRequest::EmptyId(field),
        InvalidId::TooLong => InvalidRequest::IdTooLong(field),
        InvalidId::ControlCharacter => InvalidRequest::IdControlCharacter(field),
    })?;
    Ok(id.into_owned())
}

fn parse_interval(value: &str) -> Result<Duration, InvalidRequest> {
    match value.parse::<u64>() {
        Ok(seconds @ 1..=30) if value.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(Duration::from_secs(seconds))
        }
        _ => Err(InvalidRequest::Interval(echo(value))),
    }
}

fn parse_bool(name: &'static str, value: &str) -> Result<Option<bool>, InvalidRequest> {
    if value.eq_ignore_ascii_case("true") || value == "1" {
        Ok(Some(true))
    } else if value.eq_ignore_ascii_case("false") || value == "0" {
        Ok(Some(false))
    } else {
        Err(InvalidRequest::Boolean(name, echo(value)))
    }
}

/// An empty string filter means "no filter", as a form with a blank field would send it.
/// A string filter's value: none when empty (no filter), refused over [`MAX_ID_BYTES`].
fn string_filter(name: &'static str, value: &str) -> Result<Option<String>, InvalidRequest> {
    if value.len() > MAX_ID_BYTES {
        return Err(InvalidRequest::FilterTooLong(name));
    }
    Ok((!value.is_empty()).then(|| value.to_owned()))
}

fn echo(value: &str) -> String {
    let printable: String = value
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .take(MAX_ECHO_CHARS + 1)
        .collect();
    if printable.chars().count() > MAX_ECHO_CHARS {
        format!(
            "{}…",
            printable.chars().take(MAX_ECHO_CHARS).collect::<String>()
        )
    } else {
        printable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn realtime_scene(query: &str) -> Result<Watch, InvalidRequest> {
        parse(Endpoint::SceneRealtime, "s-1", Some(query))
    }

    #[test]
    fn defaults() {
        let task = parse(Endpoint::TaskRealtime, "t-1", None).unwrap();
        assert_eq!(task.interval, Some(Duration::from_secs(2)));
        let scene = parse(Endpoint::SceneRealtime, "s-1", None).unwrap();
        assert_eq!(scene.interval, Some(Duration::from_secs(3)));
        assert_eq!(scene.filter, LocationFilter::default());
        let broadcast = parse(Endpoint::TaskBroadcast, "t-1", Some("interval=abc")).unwrap();
        assert_eq!(broadcast.interval, None);
    }

    #[test]
    fn intervals() {
        for good in ["1", "30", "7", "05"] {
            assert!(
                realtime_scene(&format!("interval={good}")).is_ok(),
                "{good}"
            );
        }
        for bad in [
            "0",
            "31",
            "-1",
            "2.5",
            "abc",
            "",
            "+2",
            " 2",
            "99999999999999999999999",
        ] {
            assert_eq!(
                realtime_scene(&format!(
                    "interval={}",
                    bad.replace('+', "%2B").replace(' ', "%20")
                )),
                Err(InvalidRequest::Interval(bad.to_owned())),
                "{bad}"
            );
        }
        assert_eq!(
            realtime_scene("interval=2&interval=3"),
            Err(InvalidRequest::Repeated("interval"))
        );
    }

    #[test]
    fn filters() {
        let watch = realtime_scene(
            "storage_area_id=A%201&station_name=%E7%AB%99&layer_name=L1&is_occupied=TRUE&is_locked=0&is_disabled=False&other=x",
        )
        .unwrap();
        assert_eq!(
            watch.filter,
            LocationFilter {
                storage_area_id: Some("A 1".into()),
                station_name: Some("站".into()),
                layer_name: Some("L1".into()),
                is_occupied: Some(true),
                is_locked: Some(false),
                is_disabled: Some(false),
            }
        );
        assert_eq!(
            realtime_scene("station_name=").unwrap().filter,
            LocationFilter::default()
        );
        // 256 bytes of UTF-8: 85 three-byte characters and one more byte.
        let longest = "站".repeat(MAX_ID_BYTES / 3) + "x";
        assert_eq!(
            realtime_scene(&format!("layer_name={longest}"))
                .unwrap()
                .filter
                .layer_name,
            Some(longest.clone())
        );
        assert_eq!(
            realtime_scene(&format!("layer_name={longest}x")),
            Err(InvalidRequest::FilterTooLong("layer_name"))
        );
        assert_eq!(
            realtime_scene("is_locked=yes"),
            Err(InvalidRequest::Boolean("is_locked", "yes".into()))
        );
        assert_eq!(
            realtime_scene("is_occupied="),
            Err(InvalidRequest::Boolean("is_occupied", String::new()))
        );
        // Task endpoints have no filters: they are ignored like any unknown parameter.
        assert!(parse(Endpoint::TaskRealtime, "t", Some("is_locked=yes")).is_ok());
    }

    #[test]
    fn ids() {
        let parse_task = |raw: &str| parse(Endpoint::TaskRealtime, raw, None).map(|w| w.id);
        assert_eq!(parse_task("a.b").unwrap(), "a.b");
        assert_eq!(parse_task("%2A").unwrap(), "*");
        assert_eq!(parse_task("a%20b").unwrap(), "a b");
        assert_eq!(parse_task("%E4%BB%BB%E5%8A%A1").unwrap(), "任务");
        assert_eq!(
            parse_task(""),
            Err(InvalidRequest::EmptyId("task_record_id"))
        );
        assert_eq!(
            parse_task("a%0Ab"),
            Err(InvalidRequest::IdControlCharacter("task_record_id"))
        );
        assert_eq!(
            parse_task("%FF"),
            Err(InvalidRequest::IdNotUtf8("task_record_id"))
        );
        assert_eq!(parse_task(&"a".repeat(256)).unwrap().len(), 256);
        assert_eq!(
            parse_task(&"a".repeat(257)),
            Err(InvalidRequest::IdTooLong("task_record_id"))
        );
        assert_eq!(
            parse(Endpoint::SceneBroadcast, "", None),
            Err(InvalidRequest::EmptyId("scene_id"))
        );
    }

    #[test]
    fn echoed_values_are_short_and_printable() {
        let long = "x".repeat(10_000);
        let Err(InvalidRequest::Interval(echoed)) = realtime_scene(&format!("interval={long}"))
        else {
            panic!()
        };
        assert_eq!(echoed.chars().count(), MAX_ECHO_CHARS + 1);
        let Err(InvalidRequest::Interval(echoed)) = realtime_scene("interval=%01") else {
            panic!()
        };
        assert_eq!(echoed, "\u{fffd}");
    }
}
