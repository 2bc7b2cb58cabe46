//! Negotiating permessage-deflate (RFC 7692 section 5): which of a client's offers the hub
//! takes, and its answer.
//!
//! The hub always answers with both `no_context_takeover` parameters:
//! - `server_no_context_takeover`: every message the hub sends is deflated on its own, so one
//!   compressed frame serves every client, and no connection keeps a compressor.
//! - `client_no_context_takeover`, which a server may impose whatever the offer said (section
//!   7.1.1.2): every client message inflates on its own, so no connection keeps an inflater
//!   (32 KiB of window) between messages either. Client messages are a few bytes of `ping` or
//!   `get_status`; the window would buy nothing.
//!
//! The hub deflates with the full 32 KiB window, so it declines an offer that limits the
//! server's window (`server_max_window_bits` below 15) and takes the client's next offer, if
//! any: honouring it would mean a second compressed copy of every message for those clients.
//! No browser, nor Python `websockets` or Node `ws`, makes such an offer by default.

/// The extension's name in `Sec-WebSocket-Extensions`.
const NAME: &str = "permessage-deflate";

/// What a Rust client of the hub offers (the tests, the load generator): Chromium's offer,
/// which Python `websockets` and Node `ws` make too.
pub const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// The hub's answer to an offer it accepts.
pub const ACCEPTED: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The answer to an offer that named `server_max_window_bits=15`, which section 7.1.2.1 has
/// the server echo: Python `websockets` fails the handshake without it.
pub const ACCEPTED_WITH_SERVER_WINDOW: &str = "permessage-deflate; server_no_context_takeover; \
     client_no_context_takeover; server_max_window_bits=15";

/// The hub's answer to the first offer in these `Sec-WebSocket-Extensions` header values that
/// it accepts, or `None`. Offers of other extensions are ignored; a malformed offer of this one
/// is declined, as section 5 requires, and the next is looked at.
pub fn answer<'a>(header_values: impl IntoIterator<Item = &'a [u8]>) -> Option<&'static str> {
    header_values
        .into_iter()
        .filter_map(|value| std::str::from_utf8(value).ok())
        .flat_map(|value| split_outside_quotes(value, ','))
        .find_map(answer_to)
}

/// The answer to one offer (`name; param; param=value`), if it is permessage-deflate in a
/// configuration the hub supports.
fn answer_to(offer: &str) -> Option<&'static str> {
    acceptable(offer).then(|| {
        let names_server_window = split_outside_quotes(offer, ';').skip(1).any(|part| {
            let name = part.split('=').next().unwrap_or_default().trim();
            Param::named(name) == Some(Param::ServerMaxWindowBits)
        });
        if names_server_window {
            ACCEPTED_WITH_SERVER_WINDOW
        } else {
            ACCEPTED
        }
    })
}

/// Whether one offer is permessage-deflate in a configuration the hub supports.
fn acceptable(offer: &str) -> bool {
    let mut parts = split_outside_quotes(offer, ';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case(NAME))
    {
        return false;
    }
    let mut seen: Vec<Param> = Vec::new();
    for part in parts {
        let (name, value) = match part.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim()))),
            None => (part, None),
        };
        let Some(param) = Param::named(name) else {
            // Section 5: decline an offer with a parameter not defined for it.
            return false;
        };
        if seen.contains(&param) {
            return false;
        }
        seen.push(param);
        let fits = match (param, value) {
            (Param::ServerNoContextTakeover | Param::ClientNoContextTakeover, None) => true,
            // The hub's window is 15 bits; a smaller one it does not do (see the module).
            (Param::ServerMaxWindowBits, Some(bits)) => window_bits(bits) == Some(15),
            (Param::ClientMaxWindowBits, None) => true,
            // Only a hint of the client's own window, which the hub's inflater always covers;
            // it still has to be valid.
            (Param::ClientMaxWindowBits, Some(bits)) => window_bits(bits).is_some(),
            _ => false,
        };
        if !fits {
            return false;
        }
    }
    true
}

/// The parameters section 7 defines for an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    ServerNoContextTakeover,
    ClientNoContextTakeover,
    ServerMaxWindowBits,
    ClientMaxWindowBits,
}

impl Param {
    fn named(name: &str) -> Option<Self> {
        [
            ("server_no_context_takeover", Self::ServerNoContextTakeover),
            ("client_no_context_takeover", Self::ClientNoContextTakeover),
            ("server_max_window_bits", Self::ServerMaxWindowBits),
            ("client_max_window_bits", Self::ClientMaxWindowBits),
        ]
        .into_iter()
        .find(|(known, _)| name.eq_ignore_ascii_case(known))
        .map(|(_, param)| param)
    }
}

/// A window size in bits: a decimal from 8 to 15 without leading zeroes (section 7.1.2).
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

/// A parameter value with the quotes of a quoted-string taken off (section 7.1: a value may
/// be a token or a quoted-string).
fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .unwrap_or(value)
}

/// `text` cut at every `separator` that is not inside a quoted-string.
fn split_outside_quotes(text: &str, separator: char) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (at, c) in current.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                c if c == separator && !quoted => {
                    rest = Some(&current[at + c.len_utf8()..]);
                    return Some(&current[..at]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(current)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(values: &[&str]) -> bool {
        answered(values).is_some()
    }

    fn answered(values: &[&str]) -> Option<&'static str> {
        answer(values.iter().map(|value| value.as_bytes()))
    }

    #[test]
    fn an_offer_naming_the_servers_window_gets_it_echoed() {
        assert_eq!(
            answered(&["permessage-deflate; server_max_window_bits=15"]),
            Some(ACCEPTED_WITH_SERVER_WINDOW)
        );
        assert_eq!(
            answered(&["permessage-deflate; client_max_window_bits"]),
            Some(ACCEPTED)
        );
        // The answer belongs to the offer taken, not to one declined before it.
        assert_eq!(
            answered(&["permessage-deflate; server_max_window_bits=9, permessage-deflate"]),
            Some(ACCEPTED)
        );
    }

    #[test]
    fn the_default_offers_of_browsers_and_common_clients_are_accepted() {
        // Chromium, Node `ws`, Python `websockets` and Firefox, as each sends it.
        assert!(offered(&["permessage-deflate; client_max_window_bits"]));
        assert!(offered(&["permessage-deflate"]));
        assert!(offered(&[
            "permessage-deflate; server_max_window_bits=15; client_max_window_bits"
        ]));
        assert!(offered(&[
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        ]));
        assert!(offered(&[
            "Permessage-Deflate; Client_Max_Window_Bits=\"12\""
        ]));
    }

    #[test]
    fn no_offer_or_another_extension_is_not_an_agreement() {
        assert!(!offered(&[]));
        assert!(!offered(&[""]));
        assert!(!offered(&["x-webkit-deflate-frame"]));
        assert!(!offered(&["permessage-deflatex"]));
    }

    #[test]
    fn offers_the_hub_cannot_honour_or_that_are_malformed_are_declined() {
        for offer in [
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=1x",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery",
        ] {
            assert!(!offered(&[offer]), "{offer}");
        }
    }

    #[test]
    fn a_declined_offer_falls_back_to_the_next_in_any_header() {
        assert!(offered(&[
            "permessage-deflate; server_max_window_bits=10, permessage-deflate"
        ]));
        assert!(offered(&[
            "x-foo; note=\"a, b\"",
            "permessage-deflate; server_max_window_bits=9",
            "permessage-deflate; client_max_window_bits",
        ]));
        // A comma inside a quoted value does not start a new offer.
        assert!(!offered(&["x-foo; note=\"x, permessage-deflate\""]));
    }
}
