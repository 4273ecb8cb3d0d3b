//! MQTT: streams from and to a broker (the `rumqttc` crate, MQTT 3.1.1).
//!
//! Sensors publish to an MQTT broker; alerts go back to one. [`Graph::source_mqtt`] subscribes
//! to topic filters and emits each message's payload, decoded; [`Graph::sink_mqtt`] publishes
//! each element of a stream to a topic made from it.
//!
//! | call | does |
//! |---|---|
//! | [`Graph::source_mqtt`] with [`MqttSource::utf8`], [`json`](MqttSource::json), [`bytes`](MqttSource::bytes) | subscribes, emits payloads as `String`, a serde type, or `Vec<u8>` |
//! | the same, [`.with_topic()`](MqttSource::with_topic) | emits [`MqttMessage`]s: each payload with the topic it came on (which sensor, for `sensors/+/temp`) |
//! | [`Graph::sink_mqtt`] with [`MqttSink::utf8`], [`json`](MqttSink::json), [`bytes`](MqttSink::bytes) | publishes each element to a topic from a template or a function |
//!
//! Both take an [`MqttBroker`]: address, client id, clean or persistent session, user name and
//! password, TLS (with the `mqtt-tls` feature), reconnection backoff.
//!
//! # Guarantees
//!
//! - **At least once with QoS 1.** The source acknowledges a message only once its element is
//!   in the graph (handed to the source's agent: see [`Source::delivered`]), so a message the
//!   broker counts as delivered is never lost on the way in. A message received and not yet
//!   acknowledged when the connection breaks is sent again by the broker (with a persistent
//!   session), so **duplicates are possible**: a reader that must not see them drops them by a
//!   key of its own (an index or timestamp in the payload). The sink keeps every QoS 1 publish
//!   until the broker acknowledges it, publishes again what was not acknowledged after a
//!   reconnection (on a new session too), and at the end of its stream waits for every
//!   acknowledgement (at most [`MqttSink::drain_timeout`]); what the broker never acknowledged
//!   is counted in [`MqttStats::undelivered`] (and in the agent's
//!   [`AgentStats::undelivered`](crate::AgentStats), which the live view shows) and logged.
//!   QoS 0 is at most once both ways.
//! - **Reconnects with backoff**: a broken or refused connection is tried again after a pause
//!   that doubles from [`MqttBroker::reconnect_backoff`]'s first to its last value, for ever or
//!   until [`MqttBroker::give_up_after`]. A broker that refuses the client's user name,
//!   password, client id or authorisation is not retried: the agent fails, naming the broker.
//! - **Never blocks other agents**: each source and sink has its connection on a thread of its
//!   own, and a sink agent runs on its own thread. Between a source's connection and its
//!   agent at most [`MqttSource::queue`] messages and [`MqttSource::queue_bytes`] bytes of
//!   payload wait (then the connection stops reading and the broker queues); a sink has at most twice [`MqttSink::max_outstanding`] publishes not
//!   acknowledged (then its step waits: back-pressure reaches its writers as on any
//!   connection).
//! - **Bad payloads**: a payload that does not decode (not UTF-8, not the JSON of the type) is
//!   counted in [`MqttStats::malformed`], logged with its topic and skipped (and acknowledged),
//!   or, with [`OnMalformed::Fail`], fails the source with an error naming the topic.
//! - **Bounded size**: a message larger than [`MqttBroker::max_payload_bytes`] fails the
//!   source (the broker would send it again and again); a sink's element whose payload is larger
//!   is not published, counted in [`MqttStats::undelivered`] and logged with its topic.
//!
//! The broker decides what it keeps for a client while it is away or slow: mosquitto keeps at
//! most `max_queued_messages` (1000 by default) per persistent session and drops the rest, QoS 1
//! included. Raise it (`max_queued_messages 0` is no limit) where bursts are larger, and turn its
//! `persistence` on for sessions to survive a restart of the broker.
//!
//! # Sessions and waiting
//!
//! - With a **clean session** the broker forgets the client when the connection breaks: what it
//!   held for a source then is lost. Use [`MqttBroker::persistent_session`] (and a client id of
//!   the source's own) where a source must not miss messages across reconnections and restarts.
//! - A source whose readers hold it back long enough for its queue to fill stops reading; if
//!   that lasts longer than one and a half keep-alives the broker drops the connection, and the
//!   source reconnects (with a persistent session, nothing is lost).
//! - A sink's step waits while the broker is away and its client's queue is full: for ever,
//!   unless [`MqttBroker::give_up_after`] fails it. A stop (Ctrl-C) then waits for the broker
//!   too; a second Ctrl-C ends the program.
//! - A message that fails a source ([`OnMalformed::Fail`]) is not acknowledged: with a
//!   persistent session the broker offers it again at the next start.
//!
//! # Behaviour at the time of writing
//!
//! The connection thread polls in slices of 100 ms; a source waits for a first message 50 ms
//! per [`Source::fill`] and takes everything waiting after it, up to its batch. MQTT 5 and QoS
//! 2 are not supported. [`MqttStats`] lives in the process that runs the agent.

use std::collections::VecDeque;
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError as ChanTimeout, Sender};
use rumqttc::{
    Client, ConnectReturnCode, Connection, ConnectionError, Event, MqttOptions, Outgoing, Packet,
    Publish, QoS, RecvTimeoutError, Request, StateError, Subscribe, SubscribeFilter,
    SubscribeReasonCode,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::agent::{Agent, Inputs, Outputs};
use crate::error::AgentError;
use crate::graph::Graph;
use crate::ops::source::Source;
use crate::stream::{heap, Element, Input, Stream};

/// How long the connection thread waits for the broker in one call, so a stop is noticed.
const POLL_SLICE: Duration = Duration::from_millis(100);

/// The payload bytes that may wait in a source's queue unless [`MqttSource::queue_bytes`]
/// says otherwise: 16 MiB.
pub const DEFAULT_QUEUE_BYTES: usize = 16 << 20;

/// The payload bytes waiting in a source's queue, and what wakes the connection's thread
/// when some are taken.
#[derive(Default)]
struct QueuedBytes {
    bytes: Mutex<usize>,
    taken: std::sync::Condvar,
}

impl QueuedBytes {
    /// Waits (a slice at most) until `bytes` more fit under `max` (or nothing waits: a larger
    /// message waits alone), then counts them (and the peak in `peak`); false if there was no
    /// room within the slice.
    fn reserve(&self, bytes: usize, max: usize, peak: &AtomicU64) -> bool {
        let mut queued = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        if *queued > 0 && *queued + bytes > max {
            queued = self
                .taken
                .wait_timeout(queued, POLL_SLICE)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            if *queued > 0 && *queued + bytes > max {
                return false;
            }
        }
        *queued += bytes;
        peak.fetch_max(*queued as u64, Relaxed);
        true
    }

    /// `bytes` were taken by the source.
    fn release(&self, bytes: usize) {
        let mut queued = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        *queued = queued.saturating_sub(bytes);
        self.taken.notify_one();
    }
}
/// How long a source's `fill` waits for a first message before it returns with none.
const FILL_WAIT: Duration = Duration::from_millis(50);
/// How long closing a connection waits for its thread to send what is owed and end.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// The most warnings one agent logs about malformed payloads or undeliverable elements; after
/// that they are only counted (and the last one kept in [`MqttStats::last_problem`]).
const WARNINGS_MAX: u64 = 10;

/// The quality of service of a subscription or a publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MqttQos {
    /// At most once: no acknowledgement; a message in flight when a connection breaks is lost.
    AtMostOnce,
    /// At least once (the default): acknowledged, sent again until it is; duplicates possible.
    #[default]
    AtLeastOnce,
}

impl MqttQos {
    fn rumqttc(self) -> QoS {
        match self {
            MqttQos::AtMostOnce => QoS::AtMostOnce,
            MqttQos::AtLeastOnce => QoS::AtLeastOnce,
        }
    }
}

/// What a source does with a payload that does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnMalformed {
    /// Count it ([`MqttStats::malformed`]), log it with its topic, acknowledge and skip it
    /// (the default).
    #[default]
    Skip,
    /// Fail the source with an error naming the topic (the elements before it are emitted).
    Fail,
}

/// TLS for an MQTT connection (rustls, ring provider): the CA that signs the broker's
/// certificate, and optionally a client certificate. The broker's certificate must name the
/// host given to [`MqttBroker::new`].
#[cfg(feature = "mqtt-tls")]
#[derive(Clone, Debug)]
pub struct MqttTls {
    ca: std::path::PathBuf,
    client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

#[cfg(feature = "mqtt-tls")]
impl MqttTls {
    /// Trusts the CA certificates in the PEM file `ca`.
    pub fn new(ca: impl Into<std::path::PathBuf>) -> Self {
        MqttTls {
            ca: ca.into(),
            client: None,
        }
    }

    /// Authenticates the client with the certificate chain and private key in these PEM files.
    pub fn client_auth(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.client = Some((cert.into(), key.into()));
        self
    }

    fn config(&self) -> Result<rumqttc::TlsConfiguration, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("cannot read '{}': {e}", p.display()))
        };
        let certs = |p: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, String> {
            let certs = CertificateDer::pem_slice_iter(&read(p)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("'{}': not PEM certificates: {e}", p.display()))?;
            if certs.is_empty() {
                return Err(format!("'{}' holds no certificate", p.display()));
            }
            Ok(certs)
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&self.ca)? {
            roots
                .add(c)
                .map_err(|e| format!("CA file '{}': {e}", self.ca.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots);
        let config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
                    .map_err(|e| format!("'{}': not a PEM private key: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(certs(cert)?, key_der)
                    .map_err(|e| format!("client certificate '{}': {e}", cert.display()))?
            }
        };
        Ok(rumqttc::TlsConfiguration::Rustls(Arc::new(config)))
    }
}

/// Where and how to connect to an MQTT broker. Shared by [`MqttSource`] and [`MqttSink`].
///
/// ```
/// use std::time::Duration;
/// use iotstream::ops::mqtt::MqttBroker;
/// let broker = MqttBroker::new("127.0.0.1", 1883, "plant-7-detector")
///     .credentials("detector", "s3cret")
///     .persistent_session()
///     .reconnect_backoff(Duration::from_millis(200), Duration::from_secs(10));
/// assert!(broker.to_string().contains("127.0.0.1:1883"));
/// ```
#[derive(Clone, Debug)]
pub struct MqttBroker {
    host: String,
    port: u16,
    client_id: String,
    credentials: Option<(String, String)>,
    clean_session: bool,
    keep_alive: Duration,
    backoff_first: Duration,
    backoff_last: Duration,
    give_up_after: Option<Duration>,
    max_payload_bytes: usize,
    #[cfg(feature = "mqtt-tls")]
    tls: Option<MqttTls>,
}

impl Display for MqttBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MQTT broker {}:{} (client id '{}')",
            self.host, self.port, self.client_id
        )
    }
}

impl MqttBroker {
    /// The broker at `host:port`, as client `client_id` (unique per broker: a second client with
    /// the same id makes the broker drop the first), with a clean session, no credentials, a
    /// keep-alive of 30 s, reconnection after 100 ms doubling up to 5 s, for ever, and messages
    /// of at most 1 MiB.
    pub fn new(host: impl Into<String>, port: u16, client_id: impl Into<String>) -> Self {
        MqttBroker {
            host: host.into(),
            port,
            client_id: client_id.into(),
            credentials: None,
            clean_session: true,
            keep_alive: Duration::from_secs(30),
            backoff_first: Duration::from_millis(100),
            backoff_last: Duration::from_secs(5),
            give_up_after: None,
            max_payload_bytes: 1 << 20,
            #[cfg(feature = "mqtt-tls")]
            tls: None,
        }
    }

    /// Logs in with this user name and password.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    /// Keeps the session at the broker while the client is away (MQTT's `clean_session =
    /// false`): its subscriptions, and the QoS 1 messages for it, wait for it to come back, also
    /// across a restart of the program. Needs a client id.
    pub fn persistent_session(mut self) -> Self {
        self.clean_session = false;
        self
    }

    /// How often the client shows it is alive when nothing else is sent (at least 1 s).
    pub fn keep_alive(mut self, every: Duration) -> Self {
        self.keep_alive = every;
        self
    }

    /// The pause before the first reconnection attempt and the longest one: each failed
    /// attempt doubles it, a connection made resets it.
    pub fn reconnect_backoff(mut self, first: Duration, last: Duration) -> Self {
        self.backoff_first = first;
        self.backoff_last = last.max(first);
        self
    }

    /// Fails the agent once the broker could not be reached for this long (by default it is
    /// tried for ever).
    pub fn give_up_after(mut self, outage: Duration) -> Self {
        self.give_up_after = Some(outage);
        self
    }

    /// The largest message payload received or sent (1 MiB by default; MQTT allows 256 MiB).
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    /// Connects over TLS (feature `mqtt-tls`).
    #[cfg(feature = "mqtt-tls")]
    pub fn tls(mut self, tls: MqttTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// What is wrong with these options, if anything.
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.host.is_empty() {
            p.push("the broker's host is empty".to_string());
        } else if self.host.contains("://") {
            // `mqtt://host` would only ever fail its name lookup, retried for ever.
            p.push(format!(
                "host '{}' must be a host name or address, without a scheme",
                self.host
            ));
        } else if self.host.contains(|c: char| c.is_whitespace() || c == '/') {
            p.push(format!(
                "host '{}' is not a host name or address",
                self.host
            ));
        }
        if self.port == 0 {
            p.push("port 0 is not a port a broker can listen on".to_string());
        }
        if self.client_id.is_empty() && !self.clean_session {
            p.push("a persistent session needs a client id".to_string());
        }
        if self.client_id.starts_with(' ') {
            p.push(format!(
                "client id '{}' starts with a space",
                self.client_id
            ));
        }
        if self.keep_alive < Duration::from_secs(1) {
            p.push(format!("keep-alive {:?} is under 1 s", self.keep_alive));
        }
        if self.max_payload_bytes == 0 || self.max_payload_bytes > 256 << 20 {
            p.push(format!(
                "max_payload_bytes {} is not within 1..=268435456",
                self.max_payload_bytes
            ));
        }
        #[cfg(feature = "mqtt-tls")]
        if let Some(Err(e)) = self.tls.as_ref().map(MqttTls::config) {
            p.push(e);
        }
        p
    }

    /// The client options; `manual_acks` for a QoS 1 source.
    fn options(&self, inflight: u16, manual_acks: bool) -> Result<MqttOptions, String> {
        let mut o = MqttOptions::new(self.client_id.clone(), self.host.clone(), self.port);
        o.set_keep_alive(self.keep_alive)
            .set_clean_session(self.clean_session)
            .set_inflight(inflight.max(1))
            .set_manual_acks(manual_acks)
            // The fixed header and topic come on top of the payload.
            .set_max_packet_size(
                self.max_payload_bytes + 64 * 1024,
                self.max_payload_bytes + 64 * 1024,
            );
        if let Some((user, password)) = &self.credentials {
            o.set_credentials(user.clone(), password.clone());
        }
        #[cfg(feature = "mqtt-tls")]
        if let Some(tls) = &self.tls {
            let config = tls.config().map_err(|e| format!("{self}: {e}"))?;
            o.set_transport(rumqttc::Transport::Tls(config));
        }
        Ok(o)
    }
}

/// Counters of one MQTT source or sink, readable during and after the run (in the process that
/// runs the agent). Get one from [`MqttSource::stats`] or [`MqttSink::stats`].
#[derive(Clone, Debug, Default)]
pub struct MqttStats {
    inner: Arc<StatsInner>,
}

#[derive(Debug, Default)]
struct StatsInner {
    received: AtomicU64,
    malformed: AtomicU64,
    published: AtomicU64,
    delivered: AtomicU64,
    undelivered: AtomicU64,
    connections: AtomicU64,
    reconnects: AtomicU64,
    subscribed: AtomicBool,
    last_problem: Mutex<Option<String>>,
    max_queued_bytes: AtomicU64,
}

impl MqttStats {
    /// The most bytes of payload that waited at once between a source's connection and its
    /// agent (at most [`MqttSource::queue_bytes`], or one larger message alone): how close
    /// the queue came to making the connection stop reading.
    pub fn max_queued_bytes(&self) -> u64 {
        self.inner.max_queued_bytes.load(Relaxed)
    }

    /// Messages a source received (duplicates included).
    pub fn received(&self) -> u64 {
        self.inner.received.load(Relaxed)
    }
    /// Messages a source skipped because their payload did not decode.
    pub fn malformed(&self) -> u64 {
        self.inner.malformed.load(Relaxed)
    }
    /// Elements a sink handed to its connection for publishing.
    pub fn published(&self) -> u64 {
        self.inner.published.load(Relaxed)
    }
    /// Publishes the broker acknowledged (QoS 1) or that were written to it (QoS 0).
    pub fn delivered(&self) -> u64 {
        self.inner.delivered.load(Relaxed)
    }
    /// Elements a sink could not deliver: too large, a topic that is not valid (or a topic
    /// template whose field is missing), not acknowledged by the end of the drain, or handed
    /// to the connection and never acknowledged when the sink failed (its connection gave up,
    /// say).
    ///
    /// Counted when the sink stops; the connection thread is told to end but not waited for,
    /// so an acknowledgement it handles after that count is in
    /// [`delivered`](Self::delivered) too (rare: a sink fails once its connection has ended or
    /// is failing).
    pub fn undelivered(&self) -> u64 {
        self.inner.undelivered.load(Relaxed)
    }
    /// Connections made (the first one included).
    pub fn connections(&self) -> u64 {
        self.inner.connections.load(Relaxed)
    }
    /// Connections lost or attempts that failed.
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Relaxed)
    }
    /// A source's subscriptions were acknowledged by the broker (on the current connection or
    /// an earlier one).
    pub fn subscribed(&self) -> bool {
        self.inner.subscribed.load(Relaxed)
    }
    /// The last malformed payload, undeliverable element or connection error, described.
    pub fn last_problem(&self) -> Option<String> {
        self.inner
            .last_problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn problem(&self, what: String) {
        *self
            .inner
            .last_problem
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(what);
    }
}

/// Decodes one message from its topic and payload; the error says what is wrong with the
/// payload (the caller names the topic).
type Decode<T> = Arc<dyn Fn(&str, &[u8]) -> Result<T, String> + Send + Sync>;

fn decode_utf8(_topic: &str, b: &[u8]) -> Result<String, String> {
    std::str::from_utf8(b)
        .map(str::to_string)
        .map_err(|e| format!("not UTF-8: {e}"))
}

fn decode_json<T: DeserializeOwned>(_topic: &str, b: &[u8]) -> Result<T, String> {
    serde_json::from_slice(b).map_err(|e| format!("not the JSON expected: {e}"))
}

fn decode_bytes(_topic: &str, b: &[u8]) -> Result<Vec<u8>, String> {
    Ok(b.to_vec())
}

/// A message as a source made with [`MqttSource::with_topic`] emits it: the topic it was
/// published to, and its payload decoded as the source says. The topic is what tells one
/// sensor from another when a source subscribes with wildcards (`sensors/+/temperature`).
///
/// ```
/// use iotstream::ops::mqtt::MqttMessage;
/// let m = MqttMessage { topic: "sensors/pump-3/temperature".to_string(), payload: 81.5 };
/// assert_eq!(m.level(1), Some("pump-3"));
/// assert_eq!(m.level(3), None);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct MqttMessage<T> {
    /// The topic the message was published to (never a filter: no `+` or `#`).
    pub topic: String,
    /// The payload, decoded.
    pub payload: T,
}

impl<T> MqttMessage<T> {
    /// Level `i` of the topic (levels are separated by `/`, the first is 0), if it has one.
    pub fn level(&self, i: usize) -> Option<&str> {
        self.topic.split('/').nth(i)
    }
}

/// What [`Graph::source_mqtt`] subscribes to and how it decodes payloads into `T`.
///
/// ```
/// use iotstream::ops::mqtt::{MqttBroker, MqttQos, MqttSource, OnMalformed};
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct Reading { sensor: String, celsius: f64 }
/// let broker = MqttBroker::new("127.0.0.1", 1883, "detector");
/// let source = MqttSource::json::<Reading>(broker, ["plant/+/temperature"])
///     .qos(MqttQos::AtLeastOnce)
///     .on_malformed(OnMalformed::Skip);
/// let stats = source.stats(); // malformed(), received(), ...
/// # let _ = stats;
/// ```
pub struct MqttSource<T> {
    broker: MqttBroker,
    topics: Vec<String>,
    qos: MqttQos,
    on_malformed: OnMalformed,
    queue: usize,
    queue_bytes: usize,
    decode: Decode<T>,
    stats: MqttStats,
}

impl MqttSource<String> {
    /// Payloads as UTF-8 text (one that is not is malformed).
    pub fn utf8(broker: MqttBroker, topics: impl IntoIterator<Item = impl Into<String>>) -> Self {
        MqttSource::with_decoder(broker, topics, Arc::new(decode_utf8))
    }
}

impl MqttSource<Vec<u8>> {
    /// Payloads as they are, bytes.
    pub fn bytes(broker: MqttBroker, topics: impl IntoIterator<Item = impl Into<String>>) -> Self {
        MqttSource::with_decoder(broker, topics, Arc::new(decode_bytes))
    }
}

impl MqttSource<()> {
    /// Payloads as JSON documents of `T` (serde): `MqttSource::json::<Reading>(broker,
    /// topics)`. A payload that is not is malformed.
    pub fn json<T: DeserializeOwned + 'static>(
        broker: MqttBroker,
        topics: impl IntoIterator<Item = impl Into<String>>,
    ) -> MqttSource<T> {
        MqttSource::with_decoder(broker, topics, Arc::new(decode_json::<T>))
    }
}

impl<T: 'static> MqttSource<T> {
    /// Emits each message with its topic, as an [`MqttMessage`] whose `payload` is decoded as
    /// before (UTF-8, JSON or bytes): for a subscription with wildcards, where the topic says
    /// which sensor, machine or room a reading comes from. Counters, QoS, malformed payloads
    /// and acknowledgements are as without it.
    ///
    /// ```no_run
    /// use iotstream::Graph;
    /// use iotstream::ops::mqtt::{MqttBroker, MqttMessage, MqttSource};
    /// let broker = MqttBroker::new("127.0.0.1", 1883, "overheat-by-sensor");
    /// let mut g = Graph::new("overheat");
    /// // Each sensor publishes a bare number to sensors/<sensor>/temp.
    /// let source = MqttSource::json::<f64>(broker, ["sensors/+/temp"]).with_topic();
    /// let readings = g.source_mqtt("readings", source);
    /// let hot = g.filter("hot", &readings, |m: &MqttMessage<f64>| m.payload > 80.0);
    /// g.for_each("alert", &hot, |m: &MqttMessage<f64>| {
    ///     let sensor = m.level(1).unwrap_or("?");
    ///     eprintln!("{sensor} is at {} °C", m.payload);
    /// });
    /// g.run().unwrap();
    /// ```
    pub fn with_topic(self) -> MqttSource<MqttMessage<T>> {
        // A message counts its topic and what its payload owns against a connection's byte
        // bound (a camera's images, with_topic, are as large as without it).
        let payload: std::sync::OnceLock<Option<heap::Counter<T>>> = std::sync::OnceLock::new();
        heap::declare_if_absent::<MqttMessage<T>>(Arc::new(move |m: &MqttMessage<T>| {
            let payload = payload.get_or_init(heap::counter::<T>);
            m.topic.capacity() + payload.as_ref().map_or(0, |c| c(&m.payload))
        }));
        let decode = self.decode;
        MqttSource {
            broker: self.broker,
            topics: self.topics,
            qos: self.qos,
            on_malformed: self.on_malformed,
            queue: self.queue,
            queue_bytes: self.queue_bytes,
            decode: Arc::new(move |topic, b| {
                Ok(MqttMessage {
                    topic: topic.to_string(),
                    payload: decode(topic, b)?,
                })
            }),
            stats: self.stats,
        }
    }
}

impl<T> MqttSource<T> {
    fn with_decoder(
        broker: MqttBroker,
        topics: impl IntoIterator<Item = impl Into<String>>,
        decode: Decode<T>,
    ) -> Self {
        MqttSource {
            broker,
            topics: topics.into_iter().map(Into::into).collect(),
            qos: MqttQos::default(),
            on_malformed: OnMalformed::default(),
            queue: 4096,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            decode,
            stats: MqttStats::default(),
        }
    }

    /// The quality of service subscribed with (QoS 1 by default).
    pub fn qos(mut self, qos: MqttQos) -> Self {
        self.qos = qos;
        self
    }

    /// What a payload that does not decode does (skipped and counted by default).
    pub fn on_malformed(mut self, what: OnMalformed) -> Self {
        self.on_malformed = what;
        self
    }

    /// The most messages waiting between the connection and the source's agent (4096 by
    /// default). When it is full the connection stops reading and the broker holds the rest
    /// (how many QoS 1 messages it sends before acknowledgements is the broker's setting:
    /// mosquitto's `max_inflight_messages`, 20 by default).
    pub fn queue(mut self, messages: usize) -> Self {
        self.queue = messages.max(1);
        self
    }

    /// The most bytes of payload waiting between the connection and the source's agent
    /// ([`DEFAULT_QUEUE_BYTES`], 16 MiB, by default; a message larger than that waits alone).
    /// The message bound alone let 4,096 camera images of 1 MiB (4 GiB) wait on a QoS 0
    /// subscription, which the broker sends without waiting for acknowledgements.
    pub fn queue_bytes(mut self, bytes: usize) -> Self {
        self.queue_bytes = bytes.max(1);
        self
    }

    /// A handle on this source's counters.
    pub fn stats(&self) -> MqttStats {
        self.stats.clone()
    }
}

/// How a sink makes an element's topic: a fixed name, a template with `{field}` placeholders
/// (a field of the element's serde form: a struct's or map's field, `{0}` a tuple's first
/// item), or a function.
///
/// A placeholder's field must be text, a number or a boolean: an element whose field is
/// missing or anything else (a NaN or infinite float included, which serde_json makes
/// `null`) is not published, and is counted in [`MqttStats::undelivered`] with the reason.
///
/// ```
/// use iotstream::ops::mqtt::MqttTopic;
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct Alert { sensor: String, level: u8 }
/// let by_sensor: MqttTopic<Alert> = "alerts/{sensor}".into();
/// let by_level = MqttTopic::by(|a: &Alert| format!("alerts/level-{}", a.level));
/// # let _ = (by_sensor, by_level);
/// ```
pub struct MqttTopic<T>(TopicKind<T>);

type TopicFn<T> = Box<dyn Fn(&T) -> String + Send + Sync>;

enum TopicKind<T> {
    Template { text: String, parts: Vec<Part> },
    Fn(TopicFn<T>),
}

#[derive(Debug, PartialEq)]
enum Part {
    Text(String),
    Field(String),
}

impl<T> MqttTopic<T> {
    /// The topic `f(element)`.
    pub fn by(f: impl Fn(&T) -> String + Send + Sync + 'static) -> Self {
        MqttTopic(TopicKind::Fn(Box::new(f)))
    }

    /// A template: text with `{field}` placeholders (`{{` and `}}` stand for braces).
    pub fn template(text: impl Into<String>) -> Self {
        let text = text.into();
        let parts = parse_template(&text).unwrap_or_default();
        MqttTopic(TopicKind::Template { text, parts })
    }

    fn problem(&self) -> Option<String> {
        match &self.0 {
            TopicKind::Template { text, .. } => parse_template(text)
                .err()
                .map(|e| format!("topic template '{text}': {e}")),
            TopicKind::Fn(_) => None,
        }
    }
}

impl<T> From<&str> for MqttTopic<T> {
    fn from(text: &str) -> Self {
        MqttTopic::template(text)
    }
}

impl<T> From<String> for MqttTopic<T> {
    fn from(text: String) -> Self {
        MqttTopic::template(text)
    }
}

fn parse_template(text: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                lit.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("'{{{name}' is not closed")),
                    }
                }
                if name.is_empty() || name.contains('{') {
                    return Err(format!("'{{{name}}}' names no field"));
                }
                if !lit.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut lit)));
                }
                parts.push(Part::Field(name));
            }
            '}' => return Err("a '}' that closes nothing (write '}}')".to_string()),
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        parts.push(Part::Text(lit));
    }
    if parts.is_empty() {
        return Err("empty".to_string());
    }
    Ok(parts)
}

impl<T: Serialize> MqttTopic<T> {
    /// The topic of `x`.
    fn of(&self, x: &T) -> Result<String, String> {
        match &self.0 {
            TopicKind::Fn(f) => Ok(f(x)),
            TopicKind::Template { text, parts } => {
                let mut value = None;
                let mut out = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => out.push_str(t),
                        Part::Field(name) => {
                            if value.is_none() {
                                value = Some(serde_json::to_value(x).map_err(|e| {
                                    format!(
                                        "topic template '{text}': element not serializable: {e}"
                                    )
                                })?);
                            }
                            let v = value.as_ref().expect("set above");
                            let field = match v {
                                serde_json::Value::Object(m) => m.get(name),
                                serde_json::Value::Array(a) => {
                                    name.parse::<usize>().ok().and_then(|i| a.get(i))
                                }
                                _ => None,
                            };
                            match field {
                                Some(serde_json::Value::String(s)) => out.push_str(s),
                                Some(
                                    n @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)),
                                ) => out.push_str(&n.to_string()),
                                _ => {
                                    return Err(format!(
                                        "topic template '{text}': the element has no text, number or boolean '{name}'"
                                    ))
                                }
                            }
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

/// Encodes one element as a payload.
type Encode<T> = fn(&T) -> Result<Vec<u8>, String>;

fn encode_display<T: Display>(x: &T) -> Result<Vec<u8>, String> {
    Ok(x.to_string().into_bytes())
}

fn encode_json<T: Serialize>(x: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(x).map_err(|e| format!("cannot encode as JSON: {e}"))
}

fn encode_bytes<T: AsRef<[u8]>>(x: &T) -> Result<Vec<u8>, String> {
    Ok(x.as_ref().to_vec())
}

/// Where and how [`Graph::sink_mqtt`] publishes the elements of a stream of `T`.
///
/// ```
/// use std::time::Duration;
/// use iotstream::ops::mqtt::{MqttBroker, MqttQos, MqttSink};
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct Alert { sensor: String, level: u8 }
/// let broker = MqttBroker::new("127.0.0.1", 1883, "alerter");
/// let sink = MqttSink::json(broker, "alerts/{sensor}")
///     .qos(MqttQos::AtLeastOnce)
///     .retain(true)
///     .max_outstanding(256)
///     .drain_timeout(Duration::from_secs(10));
/// let stats = sink.stats(); // delivered(), undelivered(), ...
/// # let _: (iotstream::ops::mqtt::MqttSink<Alert>, _) = (sink, stats);
/// ```
pub struct MqttSink<T> {
    broker: MqttBroker,
    topic: MqttTopic<T>,
    encode: Encode<T>,
    qos: MqttQos,
    retain: bool,
    max_outstanding: u16,
    drain_timeout: Duration,
    stats: MqttStats,
}

impl<T: Display> MqttSink<T> {
    /// Payloads as the elements' text (`Display`), UTF-8.
    pub fn utf8(broker: MqttBroker, topic: impl Into<MqttTopic<T>>) -> Self {
        MqttSink::with_encoder(broker, topic.into(), encode_display::<T>)
    }
}

impl<T: Serialize> MqttSink<T> {
    /// Payloads as the elements' JSON (serde). A float that is NaN or infinite is written as
    /// `null` (serde_json's rule: JSON has no such numbers), which a reader expecting a number
    /// refuses; use `Option<f64>` or a string where such values occur.
    pub fn json(broker: MqttBroker, topic: impl Into<MqttTopic<T>>) -> Self {
        MqttSink::with_encoder(broker, topic.into(), encode_json::<T>)
    }
}

impl<T: AsRef<[u8]>> MqttSink<T> {
    /// Payloads as the elements' bytes (`Vec<u8>`, say).
    pub fn bytes(broker: MqttBroker, topic: impl Into<MqttTopic<T>>) -> Self {
        MqttSink::with_encoder(broker, topic.into(), encode_bytes::<T>)
    }
}

impl<T> MqttSink<T> {
    fn with_encoder(broker: MqttBroker, topic: MqttTopic<T>, encode: Encode<T>) -> Self {
        MqttSink {
            broker,
            topic,
            encode,
            qos: MqttQos::default(),
            retain: false,
            max_outstanding: 100,
            drain_timeout: Duration::from_secs(30),
            stats: MqttStats::default(),
        }
    }

    /// The quality of service published with (QoS 1 by default).
    pub fn qos(mut self, qos: MqttQos) -> Self {
        self.qos = qos;
        self
    }

    /// Publishes with the retain flag: the broker keeps the last message of each topic for
    /// later subscribers.
    pub fn retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    /// The most publishes in flight without an acknowledgement (100 by default; as many again
    /// may wait to be sent): past that, the sink's step waits.
    pub fn max_outstanding(mut self, publishes: u16) -> Self {
        self.max_outstanding = publishes.max(1);
        self
    }

    /// How long the end of the stream waits for the broker to acknowledge what was published
    /// (30 s by default); what is not acknowledged by then is counted as undelivered.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// A handle on this sink's counters.
    pub fn stats(&self) -> MqttStats {
        self.stats.clone()
    }
}

/// Why a connection error ends the connection instead of a reconnection, if it does.
fn fatal(e: &ConnectionError, broker: &MqttBroker) -> Option<String> {
    let why = match e {
        ConnectionError::ConnectionRefused(code) => {
            match code {
                ConnectReturnCode::BadUserNamePassword => match &broker.credentials {
                    Some((user, _)) => format!("bad user name or password (user '{user}')"),
                    None => "bad user name or password (none was given)".to_string(),
                },
                // mosquitto answers a wrong password with this too.
                ConnectReturnCode::NotAuthorized => match &broker.credentials {
                    Some((user, _)) => {
                        format!("not authorized: wrong user name or password, or no access (user '{user}')")
                    }
                    None => "not authorized (no user name was given)".to_string(),
                },
                ConnectReturnCode::BadClientId => "client id not accepted".to_string(),
                ConnectReturnCode::RefusedProtocolVersion => "MQTT 3.1.1 not accepted".to_string(),
                _ => return None,
            }
        }
        ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(n),
        )) => {
            return Some(format!(
                "{broker}: a message of {n} bytes arrived, more than max_payload_bytes ({})",
                broker.max_payload_bytes
            ))
        }
        #[cfg(feature = "mqtt-tls")]
        ConnectionError::Tls(e) => return Some(format!("{broker}: TLS failed: {e}")),
        _ => return None,
    };
    Some(format!("{broker} refused the connection: {why}"))
}

/// The connection thread's side of reconnections: backoff, give-up, counters, logs.
struct Reconnect {
    broker: MqttBroker,
    stats: MqttStats,
    agent: String,
    pause: Duration,
    /// Since when no connection has been up (None while one is).
    down_since: Option<Instant>,
    ever_connected: bool,
    /// This outage was logged (once per outage, not once per attempt).
    warned: bool,
}

impl Reconnect {
    fn new(broker: &MqttBroker, stats: &MqttStats, agent: &str) -> Self {
        Reconnect {
            broker: broker.clone(),
            stats: stats.clone(),
            agent: agent.to_string(),
            pause: broker.backoff_first,
            down_since: Some(Instant::now()),
            ever_connected: false,
            warned: false,
        }
    }

    /// A connection is up. True for the first one of this client.
    fn connected(&mut self) -> bool {
        let first = !self.ever_connected;
        if self.down_since.is_some() && self.ever_connected {
            tracing::info!("mqtt '{}': connected again to {}", self.agent, self.broker);
        }
        self.ever_connected = true;
        self.down_since = None;
        self.warned = false;
        self.pause = self.broker.backoff_first;
        self.stats.inner.connections.fetch_add(1, Relaxed);
        first
    }

    /// A connection broke or an attempt failed: waits the backoff (in slices, while `stop` is
    /// clear). Err: give up, with why.
    fn failed(&mut self, e: &ConnectionError, stop: &AtomicBool) -> Result<(), String> {
        if let Some(why) = fatal(e, &self.broker) {
            return Err(why);
        }
        self.stats.inner.reconnects.fetch_add(1, Relaxed);
        let since = *self.down_since.get_or_insert_with(Instant::now);
        let what = format!("{}: {e}", self.broker);
        if !self.warned {
            self.warned = true;
            tracing::warn!(
                "mqtt '{}': {what}; reconnecting with backoff up to {:?}",
                self.agent,
                self.broker.backoff_last
            );
        }
        self.stats.problem(what.clone());
        if let Some(limit) = self.broker.give_up_after {
            if since.elapsed() >= limit {
                return Err(format!(
                    "gave up on {} after {:?} without a connection; last error: {e}",
                    self.broker, limit
                ));
            }
        }
        let until = Instant::now() + self.pause;
        self.pause = (self.pause * 2).min(self.broker.backoff_last);
        while !stop.load(Relaxed) {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                break;
            };
            std::thread::sleep(left.min(POLL_SLICE));
        }
        Ok(())
    }
}

/// Flags shared by an agent and its connection thread.
#[derive(Default)]
struct Control {
    /// End now (the agent is gone or gave up waiting).
    stop: AtomicBool,
    /// The agent asked for a disconnect: the thread ends once it is sent.
    closing: AtomicBool,
    /// Why the connection ended for good, if it did.
    fatal: Mutex<Option<String>>,
}

impl Control {
    fn set_fatal(&self, why: String) {
        let mut f = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(why);
    }
    fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Starts a connection's thread, which makes the client and its connection (rumqttc's own
/// tokio runtime lives and dies there, never on an actix thread) and runs `run` on it.
fn start_connection(
    agent: &str,
    options: MqttOptions,
    cap: usize,
    control: &Arc<Control>,
    run: impl FnOnce(Connection, Client) + Send + 'static,
) -> Result<(Client, Receiver<()>), String> {
    let (client_tx, client_rx) = crossbeam_channel::bounded(1);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
    let control2 = Arc::clone(control);
    std::thread::Builder::new()
        .name(format!("mqtt {agent}"))
        .spawn(move || {
            let _done = done_tx;
            let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Client::new(options, cap)
            }));
            match built {
                Ok((client, connection)) => {
                    let _ = client_tx.send(Ok(client.clone()));
                    run(connection, client);
                }
                Err(p) => {
                    let why = crate::error::panic_message(&*p);
                    control2.set_fatal(format!("cannot start the MQTT client: {why}"));
                    let _ = client_tx.send(Err(why));
                }
            }
        })
        .map_err(|e| format!("cannot start the MQTT thread of '{agent}': {e}"))?;
    match client_rx.recv() {
        Ok(Ok(client)) => Ok((client, done_rx)),
        Ok(Err(why)) => Err(format!("cannot start the MQTT client of '{agent}': {why}")),
        Err(_) => Err(format!("the MQTT thread of '{agent}' ended at start")),
    }
}

/// Asks the connection to disconnect once what was queued is sent, and waits (at most
/// [`CLOSE_WAIT`]) for its thread to end; `drain` empties what the thread may be waiting to
/// hand over meanwhile.
fn close_connection(client: &Client, control: &Control, done: &Receiver<()>, drain: impl Fn()) {
    control.closing.store(true, Relaxed);
    let _ = client.try_disconnect();
    let deadline = Instant::now() + CLOSE_WAIT;
    loop {
        drain();
        match done.recv_timeout(Duration::from_millis(20)) {
            Ok(()) | Err(ChanTimeout::Disconnected) => break,
            Err(ChanTimeout::Timeout) if Instant::now() >= deadline => break,
            Err(ChanTimeout::Timeout) => {}
        }
    }
    // The thread sees this within a poll slice, if it has not ended yet.
    control.stop.store(true, Relaxed);
}

/// After an error, rumqttc keeps what it must send again in `pending`, but drops it all when
/// the next connection has no session at the broker (a clean session, or a broker that
/// restarted without persistence). This keeps a copy and puts the publishes back then.
#[derive(Default)]
struct Resend(Vec<Request>);

impl Resend {
    fn after_error(&mut self, connection: &Connection) {
        self.0 = connection
            .eventloop
            .pending
            .iter()
            .filter(|r| matches!(r, Request::Publish(_)))
            .cloned()
            .collect();
    }

    fn on_connack(&mut self, connection: &mut Connection, session_present: bool) {
        let saved = std::mem::take(&mut self.0);
        if !session_present && connection.eventloop.pending.is_empty() {
            connection.eventloop.pending.extend(saved);
        }
    }
}

/// What a source's connection thread hands to its `fill`.
enum Incoming {
    Message(Publish),
    Fatal(String),
}

struct SourceThread {
    agent: String,
    broker: MqttBroker,
    filters: Vec<SubscribeFilter>,
    tx: Sender<Incoming>,
    control: Arc<Control>,
    stats: MqttStats,
    /// The payload bytes in `tx`'s queue, and the most that may wait there.
    queued: Arc<QueuedBytes>,
    queue_bytes: usize,
}

impl SourceThread {
    fn run(self, mut connection: Connection, _client: Client) {
        let mut reconnect = Reconnect::new(&self.broker, &self.stats, &self.agent);
        let mut resend = Resend::default();
        // A bound on the loop: it ends on a stop, a disconnect sent, or a fatal error.
        while !self.control.stop.load(Relaxed) {
            match connection.recv_timeout(POLL_SLICE) {
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
                Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                    let first = reconnect.connected();
                    resend.on_connack(&mut connection, ack.session_present);
                    if first || !ack.session_present {
                        // Into `pending`, not through the client: this thread is the one that
                        // empties the client's channel.
                        let subscribe = Subscribe::new_many(self.filters.clone());
                        connection
                            .eventloop
                            .pending
                            .push_front(Request::Subscribe(subscribe));
                    }
                }
                Ok(Ok(Event::Incoming(Packet::SubAck(ack)))) => {
                    let refused: Vec<&str> = ack
                        .return_codes
                        .iter()
                        .zip(&self.filters)
                        .filter(|(c, _)| matches!(c, SubscribeReasonCode::Failure))
                        .map(|(_, f)| f.path.as_str())
                        .collect();
                    if !refused.is_empty() {
                        let why = format!(
                            "{} refused the subscription to {}",
                            self.broker,
                            refused.join(", ")
                        );
                        self.fail(why);
                        return;
                    }
                    self.stats.inner.subscribed.store(true, Relaxed);
                }
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    if !self.control.closing.load(Relaxed) && !self.hand(Incoming::Message(p)) {
                        return;
                    }
                }
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => return,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    if self.control.closing.load(Relaxed) {
                        return;
                    }
                    resend.after_error(&connection);
                    if let Err(why) = reconnect.failed(&e, &self.control.stop) {
                        self.fail(why);
                        return;
                    }
                }
            }
        }
    }

    /// Ends the connection for good: the source fails with `why` after what came before.
    fn fail(&self, why: String) {
        self.control.set_fatal(why.clone());
        self.hand(Incoming::Fatal(why));
    }

    /// Hands `m` to the source, waiting while its queue is full (in messages, or in bytes of
    /// payload). False if the source is gone.
    fn hand(&self, mut m: Incoming) -> bool {
        if let Incoming::Message(p) = &m {
            // Ends: room comes, or a stop (checked every slice).
            let peak = &self.stats.inner.max_queued_bytes;
            while !self.queued.reserve(p.payload.len(), self.queue_bytes, peak) {
                if self.control.stop.load(Relaxed) {
                    return false;
                }
            }
        }
        loop {
            match self.tx.send_timeout(m, POLL_SLICE) {
                Ok(()) => return true,
                Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return false,
                Err(crossbeam_channel::SendTimeoutError::Timeout(back)) => {
                    if self.control.stop.load(Relaxed) {
                        return false;
                    }
                    m = back;
                }
            }
        }
    }
}

struct Reading {
    client: Client,
    rx: Receiver<Incoming>,
    control: Arc<Control>,
    done: Receiver<()>,
    /// The payload bytes waiting in `rx`.
    queued: Arc<QueuedBytes>,
}

/// The [`Source`] behind [`Graph::source_mqtt`].
struct MqttReader<T> {
    agent: String,
    options: MqttSource<T>,
    reading: Option<Reading>,
    /// Acknowledgements of what the last `fill` emitted (and skipped), in order, owed once
    /// its elements are in the graph.
    owed: Vec<Publish>,
    /// Acknowledgements due, not yet taken by the client's queue.
    due: VecDeque<Publish>,
}

impl<T: Element> MqttReader<T> {
    fn start(&mut self) -> Result<&Reading, AgentError> {
        if self.reading.is_none() {
            let o = &self.options;
            let qos1 = o.qos == MqttQos::AtLeastOnce;
            // A source publishes nothing: a small window of its own.
            let options = o.broker.options(10, qos1)?;
            let (tx, rx) = crossbeam_channel::bounded(o.queue);
            let control = Arc::new(Control::default());
            let queued = Arc::new(QueuedBytes::default());
            let thread = SourceThread {
                agent: self.agent.clone(),
                broker: o.broker.clone(),
                filters: o
                    .topics
                    .iter()
                    .map(|t| SubscribeFilter::new(t.clone(), o.qos.rumqttc()))
                    .collect(),
                tx,
                control: Arc::clone(&control),
                stats: o.stats.clone(),
                queued: Arc::clone(&queued),
                queue_bytes: o.queue_bytes,
            };
            // Room for every acknowledgement the queue may owe, and a subscribe.
            let cap = o.queue + 16;
            let (client, done) =
                start_connection(&self.agent, options, cap, &control, move |c, cl| {
                    thread.run(c, cl)
                })?;
            self.reading = Some(Reading {
                client,
                rx,
                control,
                done,
                queued,
            });
        }
        Ok(self.reading.as_ref().expect("started above"))
    }

    /// Hands due acknowledgements to the client, as many as its queue takes.
    fn send_acks(&mut self) {
        let Some(reading) = &self.reading else {
            return;
        };
        while let Some(p) = self.due.front() {
            if reading.client.try_ack(p).is_err() {
                break; // Full: the next `fill` tries again.
            }
            self.due.pop_front();
        }
    }

    /// One message: its element appended to `out`, or counted and skipped, or an error.
    fn take(&mut self, p: Publish, out: &mut Vec<T>) -> Result<(), AgentError> {
        let stats = &self.options.stats;
        stats.inner.received.fetch_add(1, Relaxed);
        // The client refuses only packets beyond the limit plus room for a topic and headers
        // (its own limit is on the whole packet): the payload's own bound is checked here.
        let broker = &self.options.broker;
        if p.payload.len() > broker.max_payload_bytes {
            return Err(format!(
                "{broker}: a message of {} bytes arrived on topic '{}', more than \
                 max_payload_bytes ({})",
                p.payload.len(),
                p.topic,
                broker.max_payload_bytes
            )
            .into());
        }
        let decoded = (self.options.decode)(&p.topic, &p.payload);
        let topic = p.topic.clone();
        if p.qos != QoS::AtMostOnce {
            // Only what `ack` needs: the packet id and QoS.
            self.owed.push(Publish {
                payload: Default::default(),
                topic: String::new(),
                ..p
            });
        }
        match decoded {
            Ok(v) => out.push(v),
            Err(e) => {
                let what = format!("MQTT topic '{topic}': {e}");
                if self.options.on_malformed == OnMalformed::Fail {
                    return Err(format!("{}: {what}", self.options.broker).into());
                }
                let n = stats.inner.malformed.fetch_add(1, Relaxed) + 1;
                if n <= WARNINGS_MAX {
                    tracing::warn!("source '{}': skipped a message: {what}", self.agent);
                    if n == WARNINGS_MAX {
                        tracing::warn!(
                            "source '{}': further malformed messages are only counted",
                            self.agent
                        );
                    }
                }
                stats.problem(what);
            }
        }
        Ok(())
    }
}

impl<T: Element> Source<T> for MqttReader<T> {
    fn fill(&mut self, out: &mut Vec<T>, max: usize) -> Result<bool, AgentError> {
        self.send_acks();
        let before = out.len();
        let reading = self.start()?;
        let (rx, queued) = (reading.rx.clone(), Arc::clone(&reading.queued));
        let mut next = match rx.recv_timeout(FILL_WAIT) {
            Ok(m) => Some(m),
            Err(ChanTimeout::Timeout) => return Ok(true),
            // Its thread ended without a word: never a silent end (nor a busy loop).
            Err(ChanTimeout::Disconnected) => {
                let why = self.reading.as_ref().and_then(|r| r.control.fatal());
                let why = why
                    .unwrap_or_else(|| format!("the connection to {} ended", self.options.broker));
                return Err(why.into());
            }
        };
        while let Some(m) = next.take() {
            match m {
                Incoming::Message(p) => {
                    queued.release(p.payload.len());
                    self.take(p, out)?
                }
                Incoming::Fatal(why) => return Err(why.into()),
            }
            if out.len() - before >= max {
                break;
            }
            next = rx.try_recv().ok();
        }
        if out.len() == before {
            // Only skipped messages: nothing goes to the graph, acknowledge them now.
            self.delivered();
        }
        Ok(true)
    }

    fn delivered(&mut self) {
        self.due.extend(self.owed.drain(..));
        self.send_acks();
    }
}

impl<T> Drop for MqttReader<T> {
    fn drop(&mut self) {
        let Some(reading) = self.reading.take() else {
            return;
        };
        // What was delivered is acknowledged before the disconnect (same queue, in order).
        for p in self.due.drain(..) {
            if reading.client.try_ack(&p).is_err() {
                break;
            }
        }
        let rx = reading.rx.clone();
        close_connection(&reading.client, &reading.control, &reading.done, || {
            while rx.try_recv().is_ok() {}
        });
    }
}

struct Writing {
    client: Client,
    control: Arc<Control>,
    done: Receiver<()>,
}

/// The agent behind [`Graph::sink_mqtt`].
struct MqttWriter<T> {
    agent: String,
    input: Input<T>,
    options: MqttSink<T>,
    writing: Option<Writing>,
    /// Undelivered elements already counted in the agent's metrics.
    reported: u64,
}

fn sink_thread(
    agent: String,
    broker: MqttBroker,
    qos: MqttQos,
    control: Arc<Control>,
    stats: MqttStats,
    mut connection: Connection,
) {
    let mut reconnect = Reconnect::new(&broker, &stats, &agent);
    let mut resend = Resend::default();
    // A bound on the loop: it ends on a stop, a disconnect sent, or a fatal error.
    while !control.stop.load(Relaxed) {
        match connection.recv_timeout(POLL_SLICE) {
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                reconnect.connected();
                resend.on_connack(&mut connection, ack.session_present);
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                stats.inner.delivered.fetch_add(1, Relaxed);
            }
            Ok(Ok(Event::Outgoing(Outgoing::Publish(_)))) if qos == MqttQos::AtMostOnce => {
                stats.inner.delivered.fetch_add(1, Relaxed);
            }
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => return,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                if control.closing.load(Relaxed) {
                    return;
                }
                resend.after_error(&connection);
                if let Err(why) = reconnect.failed(&e, &control.stop) {
                    tracing::error!("sink '{agent}': {why}");
                    control.set_fatal(why);
                    return;
                }
            }
        }
    }
}

impl<T: Element> MqttWriter<T> {
    fn start(&mut self) -> Result<&Writing, AgentError> {
        if self.writing.is_none() {
            let o = &self.options;
            let options = o.broker.options(o.max_outstanding, false)?;
            let control = Arc::new(Control::default());
            let (agent, broker, qos, stats) =
                (self.agent.clone(), o.broker.clone(), o.qos, o.stats.clone());
            let c = Arc::clone(&control);
            let (client, done) = start_connection(
                &self.agent,
                options,
                o.max_outstanding as usize,
                &control,
                move |connection, _client| sink_thread(agent, broker, qos, c, stats, connection),
            )?;
            self.writing = Some(Writing {
                client,
                control,
                done,
            });
        }
        Ok(self.writing.as_ref().expect("started above"))
    }

    /// Counts `x` as undeliverable, with why.
    fn undeliverable(&self, why: String) {
        let stats = &self.options.stats;
        let n = stats.inner.undelivered.fetch_add(1, Relaxed) + 1;
        if n <= WARNINGS_MAX {
            tracing::warn!("sink '{}': not published: {why}", self.agent);
        }
        stats.problem(why);
    }

    fn publish(&mut self, x: &T) -> Result<(), AgentError> {
        let o = &self.options;
        let topic = match o.topic.of(x) {
            Ok(t) => t,
            Err(why) => {
                self.undeliverable(why);
                return Ok(());
            }
        };
        if !rumqttc::valid_topic(&topic) || topic.is_empty() || topic.contains('\0') {
            self.undeliverable(format!("'{topic}' is not a valid MQTT topic name"));
            return Ok(());
        }
        let payload = match (o.encode)(x) {
            Ok(p) => p,
            Err(why) => {
                self.undeliverable(format!("MQTT topic '{topic}': {why}"));
                return Ok(());
            }
        };
        if payload.len() > o.broker.max_payload_bytes {
            let why = format!(
                "MQTT topic '{topic}': payload of {} bytes, more than max_payload_bytes ({})",
                payload.len(),
                o.broker.max_payload_bytes
            );
            self.undeliverable(why);
            return Ok(());
        }
        let (qos, retain) = (o.qos.rumqttc(), o.retain);
        let writing = self.start()?;
        // Waits while the client's queue is full: back-pressure.
        if writing.client.publish(topic, qos, retain, payload).is_err() {
            let why = writing
                .control
                .fatal()
                .unwrap_or_else(|| "the MQTT connection ended".to_string());
            return Err(why.into());
        }
        self.options.stats.inner.published.fetch_add(1, Relaxed);
        Ok(())
    }
}

impl<T: Element> MqttWriter<T> {
    /// Waits (at most the drain timeout) for the broker to acknowledge everything published,
    /// then disconnects. What was not acknowledged is counted as undelivered; a connection
    /// that ended for good is an error.
    fn drain(&mut self) -> Result<(), AgentError> {
        let Some(writing) = self.writing.take() else {
            return Ok(());
        };
        let stats = &self.options.stats.inner;
        let deadline = Instant::now() + self.options.drain_timeout;
        // Bounded by the drain timeout.
        while stats.delivered.load(Relaxed) < stats.published.load(Relaxed)
            && Instant::now() < deadline
            && writing.control.fatal().is_none()
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let missing = stats
            .published
            .load(Relaxed)
            .saturating_sub(stats.delivered.load(Relaxed));
        close_connection(&writing.client, &writing.control, &writing.done, || {});
        stats.undelivered.fetch_add(missing, Relaxed);
        if let Some(why) = writing.control.fatal() {
            return Err(why.into());
        }
        if missing > 0 {
            let why = format!(
                "{} publishes not acknowledged by {} within the drain timeout of {:?}",
                missing, self.options.broker, self.options.drain_timeout
            );
            tracing::warn!("sink '{}': {why}", self.agent);
            self.options.stats.problem(why);
        }
        Ok(())
    }

    /// The sink fails: what was handed to the connection and never acknowledged is counted
    /// undelivered (as a drain would), and the connection thread is told to end.
    fn abandon(&mut self) {
        let Some(writing) = self.writing.take() else {
            return;
        };
        writing.control.stop.store(true, Relaxed);
        let stats = &self.options.stats.inner;
        let missing = stats
            .published
            .load(Relaxed)
            .saturating_sub(stats.delivered.load(Relaxed));
        stats.undelivered.fetch_add(missing, Relaxed);
    }

    /// Reports what became undelivered since the last report to the agent's counters
    /// ([`Inputs::count_undelivered`]: `AgentStats::undelivered`, the live view).
    fn report_undelivered(&mut self, inputs: &mut Inputs<'_>) {
        let now = self.options.stats.undelivered();
        inputs.count_undelivered(now.saturating_sub(self.reported));
        self.reported = now;
    }
}

impl<T: Element> Agent for MqttWriter<T> {
    fn step(&mut self, inputs: &mut Inputs<'_>, _: &mut Outputs<'_>) -> Result<(), AgentError> {
        let new = inputs.slice(&self.input);
        let n = new.len();
        let mut result = Ok(());
        for x in new {
            result = self.publish(x);
            if result.is_err() {
                break;
            }
        }
        inputs.consume(&self.input, n);
        if result.is_ok() {
            if let Some(why) = self.writing.as_ref().and_then(|w| w.control.fatal()) {
                result = Err(why.into());
            } else if inputs.is_closed(&self.input) {
                // The end of the stream: the drain happens here, where what it could not
                // deliver can still be counted in the agent's metrics (`finish` sees no
                // inputs); `finish` drains only if this step did not.
                result = self.drain();
            }
        }
        if result.is_err() {
            self.abandon();
        }
        self.report_undelivered(inputs);
        result
    }

    fn finish(&mut self, _: &mut Outputs<'_>) -> Result<(), AgentError> {
        self.drain()
    }
}

impl<T> Drop for MqttWriter<T> {
    fn drop(&mut self) {
        // An agent dropped without `finish` (a failed run): end the thread.
        if let Some(w) = self.writing.take() {
            w.control.stop.store(true, Relaxed);
        }
    }
}

impl Graph {
    /// A source that subscribes to an MQTT broker and emits each message's payload, decoded
    /// as the [`MqttSource`] says. It runs until the application stops (its stream does not
    /// end by itself). See the [module docs](crate::ops::mqtt) for what is guaranteed
    /// (at least once with QoS 1: duplicates are possible).
    ///
    /// ```no_run
    /// use iotstream::Graph;
    /// use iotstream::ops::mqtt::{MqttBroker, MqttSource};
    /// #[derive(Clone, serde::Serialize, serde::Deserialize)]
    /// struct Reading { sensor: String, celsius: f64 }
    /// let broker = MqttBroker::new("127.0.0.1", 1883, "overheat-detector").persistent_session();
    /// let mut g = Graph::new("overheat");
    /// let readings = g.source_mqtt("readings", MqttSource::json::<Reading>(broker, ["plant/+/temperature"]));
    /// let hot = g.filter("hot", &readings, |r: &Reading| r.celsius > 80.0);
    /// g.for_each("alert", &hot, |r: &Reading| eprintln!("{} is at {} °C", r.sensor, r.celsius));
    /// g.run().unwrap();
    /// ```
    pub fn source_mqtt<T: Element>(&mut self, name: &str, source: MqttSource<T>) -> Stream<T> {
        let mut problems = source.broker.problems();
        if source.topics.is_empty() {
            problems.push("no topic filter to subscribe to".to_string());
        }
        for t in &source.topics {
            if !rumqttc::valid_filter(t) {
                problems.push(format!("'{t}' is not a valid MQTT topic filter"));
            }
        }
        for p in problems {
            self.problem(format!("source_mqtt '{name}': {p}"));
        }
        let reader = MqttReader {
            agent: name.to_string(),
            options: source,
            reading: None,
            owed: Vec::new(),
            due: VecDeque::new(),
        };
        self.source(name, reader)
    }

    /// A sink that publishes each element of `stream` to an MQTT broker, to the topic and
    /// with the payload the [`MqttSink`] says. It runs on its own thread; at the end of the
    /// stream it waits for the broker to acknowledge what it published. See the
    /// [module docs](crate::ops::mqtt) for what is guaranteed.
    ///
    /// ```no_run
    /// use iotstream::Graph;
    /// use iotstream::ops::mqtt::{MqttBroker, MqttQos, MqttSink, MqttTopic};
    /// let mut g = Graph::new("alerts");
    /// let alerts = g.source_iter("alerts", [("pump-3".to_string(), 91.5), ("pump-7".into(), 88.0)]);
    /// let broker = MqttBroker::new("127.0.0.1", 1883, "alerter");
    /// let stats = g.sink_mqtt("publish", &alerts, MqttSink::json(broker, "alerts/{0}").qos(MqttQos::AtLeastOnce));
    /// g.run().unwrap();
    /// assert_eq!(stats.undelivered(), 0);
    /// ```
    pub fn sink_mqtt<T: Element>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        sink: MqttSink<T>,
    ) -> MqttStats {
        let mut problems = sink.broker.problems();
        problems.extend(sink.topic.problem());
        for p in problems {
            self.problem(format!("sink_mqtt '{name}': {p}"));
        }
        let stats = sink.stats();
        let agent = name.to_string();
        let input = self.add_agent(name, |p| {
            let input = p.input::<T>("in");
            (
                MqttWriter {
                    agent,
                    input,
                    options: sink,
                    writing: None,
                    reported: 0,
                },
                input,
            )
        });
        self.connect(stream, &input);
        self.last_agent_on_own_thread();
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages with their topic count the topic and the payload's bytes against a byte bound
    /// (the payload's own counter: built in for bytes and text, none for a number).
    #[test]
    fn messages_with_topic_count_their_topic_and_payload() {
        let broker = MqttBroker::new("127.0.0.1", 1883, "counted");
        let _ = MqttSource::bytes(broker.clone(), ["cameras/+"]).with_topic();
        let _ = MqttSource::json::<f64>(broker, ["sensors/+"]).with_topic();
        let image = MqttMessage {
            topic: String::from("cameras/door"),
            payload: vec![0u8; 1000],
        };
        let count = heap::counter::<MqttMessage<Vec<u8>>>().expect("a counter");
        assert_eq!(count(&image), image.topic.capacity() + 1000);
        let reading = MqttMessage {
            topic: String::from("sensors/t1"),
            payload: 21.5,
        };
        let count = heap::counter::<MqttMessage<f64>>().expect("a counter");
        assert_eq!(count(&reading), reading.topic.capacity());
    }

    #[test]
    fn templates_parse_and_render_fields_of_structs_and_tuples() {
        #[derive(Serialize)]
        struct Alert {
            sensor: String,
            level: u8,
        }
        let t: MqttTopic<Alert> = "alerts/{sensor}/{level}".into();
        let a = Alert {
            sensor: "pump-3".into(),
            level: 2,
        };
        assert_eq!(t.of(&a).unwrap(), "alerts/pump-3/2");
        let t: MqttTopic<(String, f64)> = "by/{0}".into();
        assert_eq!(t.of(&("x".to_string(), 1.0)).unwrap(), "by/x");
        let t: MqttTopic<Alert> = "fixed/{{braces}}".into();
        assert_eq!(t.of(&a).unwrap(), "fixed/{braces}");
        let t: MqttTopic<Alert> = "alerts/{room}".into();
        let e = t.of(&a).unwrap_err();
        assert!(e.contains("'room'") && e.contains("alerts/{room}"), "{e}");
        // A NaN field is JSON null: no number to put in the topic.
        let t: MqttTopic<(String, f64)> = "by/{1}".into();
        assert_eq!(t.of(&("x".to_string(), 1.5)).unwrap(), "by/1.5");
        let e = t.of(&("x".to_string(), f64::NAN)).unwrap_err();
        assert!(e.contains("no text, number or boolean '1'"), "{e}");
        for bad in ["alerts/{sensor", "alerts/}", "a/{}", ""] {
            let t: MqttTopic<Alert> = bad.into();
            assert!(t.problem().is_some(), "{bad}");
        }
    }

    #[test]
    fn refusals_are_fatal_and_name_the_user_other_errors_are_retried() {
        let b = MqttBroker::new("127.0.0.1", 1, "me").credentials("alice", "x");
        let e = ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword);
        let why = fatal(&e, &b).unwrap();
        assert!(
            why.contains("127.0.0.1:1") && why.contains("'alice'"),
            "{why}"
        );
        let e = ConnectionError::ConnectionRefused(ConnectReturnCode::ServiceUnavailable);
        assert!(fatal(&e, &b).is_none());
        let e = ConnectionError::Io(std::io::ErrorKind::ConnectionRefused.into());
        assert!(fatal(&e, &b).is_none());
    }

    #[test]
    fn broker_options_are_checked() {
        let b = MqttBroker::new("", 1883, "").persistent_session();
        let p = b.problems();
        assert_eq!(p.len(), 2, "{p:?}");
        let b = MqttBroker::new("h", 1883, "x").keep_alive(Duration::from_millis(10));
        assert_eq!(b.problems().len(), 1);
    }
}
