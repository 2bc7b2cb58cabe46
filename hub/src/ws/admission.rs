//! Who may open a connection: the `Origin` allow-list and the connection limits, checked before
//! the upgrade's first byte of data, so a refused client never sees a key's state.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::http::{header, HeaderMap};
use dashmap::DashMap;
use ipnet::IpNet;

/// The rules, as configured.
#[derive(Debug, Clone, Default)]
pub struct AdmissionRules {
    /// `Origin` values allowed to connect (e.g. `https://panel.example.com`); empty allows all.
    /// Requests without an `Origin` (services, not browsers) are always allowed: the list
    /// guards browsers against pages of other sites using them to connect.
    pub allowed_origins: Vec<String>,
    /// Peers whose `X-Forwarded-For` is believed: the client is the right-most address that is
    /// not one of them. Anyone else's header is ignored, since a client can write any header.
    pub trusted_proxies: Vec<IpNet>,
    /// Open connections allowed in all; 0 for no limit.
    pub max_connections: usize,
    /// Open connections allowed per client address; 0 for no limit.
    pub max_per_ip: usize,
}

/// Counts open connections against the rules.
#[derive(Debug, Default)]
pub struct Admission {
    /// What is allowed.
    rules: AdmissionRules,
    /// Connections open now (or upgrading), in all.
    total: AtomicUsize,
    /// Connections open now per client address; an address leaves the map with its last one.
    per_ip: DashMap<IpAddr, usize>,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The hub holds its limit of connections.
    TooManyConnections,
    /// This client address holds its limit.
    TooManyFromAddress,
}

/// A connection's place under the limits; given back when dropped.
#[derive(Debug)]
pub struct Admitted {
    /// The counts to give the place back to.
    admission: Arc<Admission>,
    /// The address it is counted under.
    ip: IpAddr,
}

impl Admission {
    /// Counting under `rules`.
    pub fn new(rules: AdmissionRules) -> Self {
        Self {
            rules,
            ..Self::default()
        }
    }

    /// Whether the request's `Origin` (if any) may connect.
    pub fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        self.rules.allowed_origins.is_empty()
            || origin.to_str().is_ok_and(|origin| {
                self.rules
                    .allowed_origins
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(origin.trim()))
            })
    }

    /// The client's address: the peer's, or, when the peer is a trusted proxy, the right-most
    /// address in `X-Forwarded-For` that is not a trusted proxy.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let trusted = |ip: &IpAddr| {
            self.rules
                .trusted_proxies
                .iter()
                .any(|net| net.contains(ip))
        };
        let mut client = peer.ip();
        if !trusted(&client) {
            return client;
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in forwarded.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !trusted(&ip) {
                        break;
                    }
                }
                // A hop that is no address cannot be trusted further.
                Err(_) => break,
            }
        }
        client
    }

    /// Takes a place for a connection from `ip`, or says which limit stands in the way.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        let max_total = self.rules.max_connections;
        if self.total.fetch_add(1, Ordering::AcqRel) >= max_total && max_total > 0 {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::TooManyConnections);
        }
        let max_per_ip = self.rules.max_per_ip;
        {
            // The shard lock makes check-and-count one step for this address.
            let mut count = self.per_ip.entry(ip).or_insert(0);
            if *count >= max_per_ip && max_per_ip > 0 {
                drop(count);
                self.release(ip);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::TooManyFromAddress);
            }
            *count += 1;
        }
        Ok(Admitted {
            admission: self.clone(),
            ip,
        })
    }

    /// Forgets an address that holds no connection (after a refusal left a zero behind).
    fn release(&self, ip: IpAddr) {
        self.per_ip.remove_if(&ip, |_, count| *count == 0);
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let admission = &self.admission;
        if let Some(mut count) = admission.per_ip.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
        }
        admission.release(self.ip);
        admission.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn with_forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let admission = Admission::new(AdmissionRules {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            ..AdmissionRules::default()
        });
        let proxy: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let stranger: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let headers = with_forwarded("198.51.100.7, 203.0.113.9, 10.9.9.9");
        assert_eq!(
            admission.client_ip(proxy, &headers),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(admission.client_ip(stranger, &headers), stranger.ip());
        assert_eq!(admission.client_ip(proxy, &HeaderMap::new()), proxy.ip());
        assert_eq!(
            admission.client_ip(proxy, &with_forwarded("nonsense, 10.2.2.2")),
            "10.2.2.2".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn places_are_limited_and_given_back() {
        let admission = Arc::new(Admission::new(AdmissionRules {
            max_connections: 3,
            max_per_ip: 2,
            ..AdmissionRules::default()
        }));
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let first = admission.admit(a).expect("room");
        let _second = admission.admit(a).expect("room");
        assert_eq!(admission.admit(a).unwrap_err(), Refusal::TooManyFromAddress);
        let _third = admission.admit(b).expect("room");
        assert_eq!(admission.admit(b).unwrap_err(), Refusal::TooManyConnections);
        drop(first);
        let _again = admission.admit(b).expect("a place was given back");
        assert_eq!(admission.per_ip.len(), 2);
    }

    #[test]
    fn origins_are_checked_only_when_listed_and_only_for_browsers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(Admission::default().origin_allowed(&headers));
        let listed = Admission::new(AdmissionRules {
            allowed_origins: vec!["https://panel.example".into()],
            ..AdmissionRules::default()
        });
        assert!(!listed.origin_allowed(&headers));
        assert!(listed.origin_allowed(&HeaderMap::new()));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://PANEL.example"),
        );
        assert!(listed.origin_allowed(&headers));
    }
}
