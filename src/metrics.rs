//! statsd metrics over UDP, in the wire format Python MyHoard sends: Telegraf's tag extension,
//! `name,tag=value,...:value|type`, one datagram per metric.
//!
//! [`Metrics`] is a cheap clonable handle (an `Arc` inside) that every thread carries through
//! the controller's `Context`. Sending never blocks and never fails the caller: the socket is
//! non-blocking, a datagram that cannot go out is dropped and logged at debug level. With
//! `statsd.host` null every call is a no-op.
//!
//! Tags are the config's `statsd.tags`, then the dynamic global tags (the controller sets
//! `controller_mode` on every mode change), then the call's own; a later one replaces an earlier
//! one of the same name. MyHoard's quirks are kept so that existing dashboards and queries work
//! unchanged (spec 9.1):
//!
//! - tags go out in reverse alphabetical order (MyHoard inserts each sorted tag right after the
//!   name);
//! - a tag value containing a space, `:`, `|` or `=` is sent as `INVALID`; so, ours, is one with
//!   a `,` or a control character, which would otherwise split into a bogus tag or datagram;
//! - timings are sent in **seconds** (a float) with the type `ms`.
//!
//! Ours too: characters of a tag *name* that would break the line (the same set) become `_`, and
//! a value that is not a finite number is not sent.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use crate::config::{StatsdSettings, StatsdTarget};

/// The statsd metric types MyHoard uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// Seconds, despite the `ms` on the wire (MyHoard's quirk).
    Timing,
}

impl Kind {
    fn wire_suffix(self) -> &'static str {
        match self {
            Kind::Counter => "c",
            Kind::Gauge => "g",
            Kind::Timing => "ms",
        }
    }
}

/// A metric's value: integers go out as integers, floats always with a fractional part (as
/// Python's `str(float)` writes them: `12.0`, `0.25`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
}

impl From<i64> for Value {
    fn from(value: i64) -> Value {
        Value::Int(value)
    }
}

impl From<u64> for Value {
    fn from(value: u64) -> Value {
        Value::Int(i64::try_from(value).unwrap_or(i64::MAX))
    }
}

impl From<usize> for Value {
    fn from(value: usize) -> Value {
        Value::Int(i64::try_from(value).unwrap_or(i64::MAX))
    }
}

impl From<u32> for Value {
    fn from(value: u32) -> Value {
        Value::Int(i64::from(value))
    }
}

impl From<f64> for Value {
    fn from(value: f64) -> Value {
        Value::Float(value)
    }
}

/// The handle every thread sends metrics through.
#[derive(Clone, Default)]
pub struct Metrics {
    shared: Arc<RwLock<Shared>>,
}

#[derive(Default)]
struct Shared {
    /// `None`: metrics are off.
    sink: Option<Sink>,
    /// `statsd.tags` from the config.
    config_tags: BTreeMap<String, String>,
    /// Tags the daemon sets as it runs (`controller_mode`); kept across a reconfiguration.
    dynamic_tags: BTreeMap<String, String>,
}

struct Sink {
    socket: UdpSocket,
    target: SocketAddr,
}

impl Metrics {
    /// Metrics as `settings` say. Never fails: a target that does not resolve, or a socket
    /// that cannot be opened, is logged as a warning and metrics stay off.
    pub fn new(settings: &StatsdSettings) -> Metrics {
        let metrics = Metrics::default();
        metrics.reconfigure(settings);
        metrics
    }

    /// Metrics that are never sent.
    pub fn disabled() -> Metrics {
        Metrics::default()
    }

    /// Applies new settings (a configuration reload): target and config tags are replaced,
    /// the dynamic global tags stay.
    pub fn reconfigure(&self, settings: &StatsdSettings) {
        let sink = settings.target.as_ref().and_then(open_sink);
        let mut shared = self.write();
        shared.sink = sink;
        shared.config_tags = settings.tags.clone();
    }

    /// Whether metrics are sent at all (callers may skip computing a costly value).
    pub fn is_enabled(&self) -> bool {
        self.read().sink.is_some()
    }

    /// Sets a global tag sent with every metric from now on (`controller_mode`).
    pub fn set_global_tag(&self, name: &str, value: &str) {
        self.write()
            .dynamic_tags
            .insert(name.to_owned(), value.to_owned());
    }

    /// Counter `name` plus one.
    pub fn increase(&self, name: &str, tags: &[(&str, &str)]) {
        self.send(name, Value::Int(1), Kind::Counter, tags);
    }

    /// Counter `name` plus `by`.
    pub fn increase_by(&self, name: &str, by: impl Into<Value>, tags: &[(&str, &str)]) {
        self.send(name, by.into(), Kind::Counter, tags);
    }

    /// Gauge `name` set to `value`.
    pub fn gauge(&self, name: &str, value: impl Into<Value>, tags: &[(&str, &str)]) {
        self.send(name, value.into(), Kind::Gauge, tags);
    }

    /// Timing `name`: sent in seconds with the type `ms`, as MyHoard does.
    pub fn timing(&self, name: &str, elapsed: Duration, tags: &[(&str, &str)]) {
        self.send(
            name,
            Value::Float(elapsed.as_secs_f64()),
            Kind::Timing,
            tags,
        );
    }

    fn send(&self, name: &str, value: Value, kind: Kind, tags: &[(&str, &str)]) {
        let shared = self.read();
        let Some(sink) = &shared.sink else {
            return;
        };
        let mut merged: BTreeMap<&str, &str> = BTreeMap::new();
        for (tag, tag_value) in shared.config_tags.iter().chain(&shared.dynamic_tags) {
            merged.insert(tag, tag_value);
        }
        for (tag, tag_value) in tags {
            merged.insert(tag, tag_value);
        }
        let Some(datagram) = format_datagram(name, value, kind, &merged) else {
            log::debug!("metric {name}: {value:?} is not a number statsd takes; not sent");
            return;
        };
        // Non-blocking: a full socket buffer drops the metric rather than stall the caller.
        if let Err(err) = sink.socket.send_to(datagram.as_bytes(), sink.target) {
            log::debug!("sending metric {name} to {}: {err}", sink.target);
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Shared> {
        // A panic elsewhere while holding the lock leaves consistent data (plain assignments).
        self.shared
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Shared> {
        self.shared
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn open_sink(target: &StatsdTarget) -> Option<Sink> {
    let opened = (|| -> std::io::Result<Sink> {
        let address = (target.host.as_str(), target.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("the host name has no address"))?;
        let local: SocketAddr = if address.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let socket = UdpSocket::bind(local)?;
        socket.set_nonblocking(true)?;
        Ok(Sink {
            socket,
            target: address,
        })
    })();
    match opened {
        Ok(sink) => {
            log::info!(
                "sending statsd metrics to {}:{} ({})",
                target.host,
                target.port,
                sink.target
            );
            Some(sink)
        }
        Err(err) => {
            log::warn!(
                "statsd target {}:{}: {err}; metrics are off",
                target.host,
                target.port
            );
            None
        }
    }
}

/// Characters that would break the `name,tag=value:value|type` line.
fn breaks_line(c: char) -> bool {
    matches!(c, ' ' | ':' | '|' | '=' | ',') || c.is_control()
}

/// One datagram; `None` for a value statsd cannot parse (NaN, infinities).
fn format_datagram(
    name: &str,
    value: Value,
    kind: Kind,
    tags: &BTreeMap<&str, &str>,
) -> Option<String> {
    let value = match value {
        Value::Int(int) => int.to_string(),
        Value::Float(float) if !float.is_finite() => return None,
        // Rust prints whole floats without a fraction; Python (and so MyHoard) writes `12.0`.
        Value::Float(float) if float.fract() == 0.0 && float.abs() < 1e15 => format!("{float:.1}"),
        Value::Float(float) => float.to_string(),
    };
    let mut datagram = String::with_capacity(64);
    datagram.push_str(name);
    for (tag, tag_value) in tags.iter().rev() {
        let tag: String = tag
            .chars()
            .map(|c| if breaks_line(c) { '_' } else { c })
            .collect();
        let tag_value = if tag_value.chars().any(breaks_line) {
            "INVALID"
        } else {
            tag_value
        };
        let _ = write!(datagram, ",{tag}={tag_value}");
    }
    let _ = write!(datagram, ":{value}|{}", kind.wire_suffix());
    Some(datagram)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags<'a>(pairs: &[(&'a str, &'a str)]) -> BTreeMap<&'a str, &'a str> {
        pairs.iter().copied().collect()
    }

    /// What the case shows, name, value, type, tags, the datagram expected.
    type Case<'a> = (
        &'a str,
        &'a str,
        Value,
        Kind,
        &'a [(&'a str, &'a str)],
        Option<&'a str>,
    );

    #[test]
    fn datagrams_in_myhoards_format() {
        let cases: &[Case] = &[
            (
                "counter without tags",
                "myhoard.binlog.upload",
                Value::Int(1),
                Kind::Counter,
                &[],
                Some("myhoard.binlog.upload:1|c"),
            ),
            (
                "tags in reverse alphabetical order",
                "myhoard.backup_started",
                Value::Int(1),
                Kind::Counter,
                &[
                    ("app", "myhoard"),
                    ("resumed", "false"),
                    ("controller_mode", "active"),
                ],
                Some("myhoard.backup_started,resumed=false,controller_mode=active,app=myhoard:1|c"),
            ),
            (
                "integer gauge",
                "myhoard.basebackup.bytes_compressed",
                Value::Int(123_456),
                Kind::Gauge,
                &[],
                Some("myhoard.basebackup.bytes_compressed:123456|g"),
            ),
            (
                "negative gauge",
                "g",
                Value::Int(-5),
                Kind::Gauge,
                &[],
                Some("g:-5|g"),
            ),
            (
                "whole float keeps its fraction, as Python writes it",
                "myhoard.binlog.time_since_any_purged",
                Value::Float(12.0),
                Kind::Gauge,
                &[],
                Some("myhoard.binlog.time_since_any_purged:12.0|g"),
            ),
            (
                "fractional float",
                "myhoard.basebackup.compression_ratio",
                Value::Float(2.5),
                Kind::Gauge,
                &[],
                Some("myhoard.basebackup.compression_ratio:2.5|g"),
            ),
            (
                "timing in seconds with type ms",
                "myhoard.basebackup.xtrabackup_backup",
                Value::Float(0.25),
                Kind::Timing,
                &[("success", "1")],
                Some("myhoard.basebackup.xtrabackup_backup,success=1:0.25|ms"),
            ),
            (
                "value with a space is INVALID",
                "m",
                Value::Int(1),
                Kind::Counter,
                &[("where", "a b")],
                Some("m,where=INVALID:1|c"),
            ),
            (
                "value with a colon is INVALID",
                "m",
                Value::Int(1),
                Kind::Counter,
                &[("at", "10:00")],
                Some("m,at=INVALID:1|c"),
            ),
            (
                "value with a pipe or an equals sign is INVALID",
                "m",
                Value::Int(1),
                Kind::Counter,
                &[("a", "x|y"), ("b", "k=v")],
                Some("m,b=INVALID,a=INVALID:1|c"),
            ),
            (
                "value with a comma or a newline is INVALID (ours)",
                "m",
                Value::Int(1),
                Kind::Counter,
                &[("a", "x,y"), ("b", "x\ny")],
                Some("m,b=INVALID,a=INVALID:1|c"),
            ),
            (
                "empty value (a null tag in the config)",
                "m",
                Value::Int(1),
                Kind::Counter,
                &[("z", "")],
                Some("m,z=:1|c"),
            ),
            (
                "a tag name that would break the line is patched",
                "m",
                Value::Int(1),
                Kind::Counter,
                &[("bad name", "v")],
                Some("m,bad_name=v:1|c"),
            ),
            (
                "NaN is not sent",
                "m",
                Value::Float(f64::NAN),
                Kind::Gauge,
                &[],
                None,
            ),
            (
                "infinity is not sent",
                "m",
                Value::Float(f64::INFINITY),
                Kind::Gauge,
                &[],
                None,
            ),
        ];
        for (what, name, value, kind, pairs, expected) in cases {
            assert_eq!(
                format_datagram(name, *value, *kind, &tags(pairs)).as_deref(),
                *expected,
                "{what}"
            );
        }
    }

    #[test]
    fn large_counts_saturate() {
        assert_eq!(Value::from(u64::MAX), Value::Int(i64::MAX));
        assert_eq!(Value::from(7usize), Value::Int(7));
    }

    fn receiver() -> (UdpSocket, StatsdSettings) {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("binding a UDP socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let port = socket.local_addr().expect("local address").port();
        let settings = StatsdSettings {
            target: Some(StatsdTarget {
                host: "127.0.0.1".to_owned(),
                port,
            }),
            tags: [("app".to_owned(), "myhoard".to_owned())].into(),
        };
        (socket, settings)
    }

    fn next_datagram(socket: &UdpSocket) -> String {
        let mut buffer = [0u8; 1500];
        let (len, _) = socket.recv_from(&mut buffer).expect("a datagram");
        String::from_utf8_lossy(&buffer[..len]).into_owned()
    }

    #[test]
    fn merges_config_dynamic_and_call_tags() {
        let (socket, settings) = receiver();
        let metrics = Metrics::new(&settings);
        assert!(metrics.is_enabled());
        metrics.set_global_tag("controller_mode", "active");
        metrics.increase("myhoard.binlog.upload", &[]);
        assert_eq!(
            next_datagram(&socket),
            "myhoard.binlog.upload,controller_mode=active,app=myhoard:1|c"
        );
        // A call's tag replaces a global one of the same name; clones share the global tags.
        let clone = metrics.clone();
        metrics.set_global_tag("controller_mode", "restore");
        clone.gauge("g", 3u64, &[("app", "other")]);
        assert_eq!(
            next_datagram(&socket),
            "g,controller_mode=restore,app=other:3|g"
        );
        clone.timing("t", Duration::from_millis(1500), &[]);
        assert_eq!(
            next_datagram(&socket),
            "t,controller_mode=restore,app=myhoard:1.5|ms"
        );
    }

    #[test]
    fn reconfiguring_keeps_the_dynamic_tags() {
        let (first, settings) = receiver();
        let metrics = Metrics::new(&settings);
        metrics.set_global_tag("controller_mode", "observe");
        let (second, mut new_settings) = receiver();
        new_settings.tags = [("app".to_owned(), "renamed".to_owned())].into();
        metrics.reconfigure(&new_settings);
        metrics.increase("c", &[]);
        assert_eq!(
            next_datagram(&second),
            "c,controller_mode=observe,app=renamed:1|c"
        );
        first
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        let mut buffer = [0u8; 64];
        assert!(
            first.recv_from(&mut buffer).is_err(),
            "the old target gets nothing after the reload"
        );
        // Null host: off, and calls are no-ops.
        metrics.reconfigure(&StatsdSettings {
            target: None,
            tags: BTreeMap::new(),
        });
        assert!(!metrics.is_enabled());
        metrics.increase("c", &[]);
        second
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        assert!(
            second.recv_from(&mut buffer).is_err(),
            "nothing sent when off"
        );
    }

    #[test]
    fn unresolvable_target_turns_metrics_off() {
        let metrics = Metrics::new(&StatsdSettings {
            target: Some(StatsdTarget {
                host: "no-such-host.invalid".to_owned(),
                port: 8125,
            }),
            tags: BTreeMap::new(),
        });
        assert!(!metrics.is_enabled());
        metrics.increase("c", &[]);
        assert!(!Metrics::disabled().is_enabled());
    }
}
