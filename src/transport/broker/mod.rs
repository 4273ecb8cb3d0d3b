//! Broker links: a connection that crosses NATS JetStream instead of a direct TCP link.
//!
//! A deployment with a `[broker]` section may mark a connection (or a pair of hosts)
//! `transport = "broker"`; programs and tests force it with `Transport::Broker` and
//! `Graph::broker`. The writer then needs no address of its reader, the reader resumes where it
//! stopped after a restart, and any number of hosts may come and go: the broker keeps the
//! stream. Agents see nothing of it.
//!
//! # Names
//!
//! Each connection (edge) has a JetStream stream of its own, named after the application, the
//! stream and the reading input ([`BrokerNames`]):
//!
//! - stream `IOTSTREAM_<app>_<agent>_<port>__<reader>_<input>`,
//! - subject `iotstream.<app>.<agent>.<port>.<reader>.<input>` (the stream's only subject),
//! - durable pull consumer `<reader>_<input>`.
//!
//! NATS allows in stream and consumer names only characters other than whitespace, `.`, `*`,
//! `>`, `/` and `\`, and in subject tokens none of whitespace, `.`, `*`, `>`. Every character
//! outside `A-Z a-z 0-9 - _` is replaced by `_`, and when anything was replaced (or the name
//! is longer than 200 bytes, cut) an 8-hex-digit hash of the original name is appended, so two
//! names that differ only in such characters stay apart. The subject keeps the five parts apart
//! (`.` joins them); a stream's name may not (`_` joins them, and may be in a part): app `a_b`
//! with agent `c` and app `a` with agent `b_c` name one stream with two subjects. The second to
//! start is refused, saying so (see `fit_stream`).
//!
//! # The link, end to end
//!
//! - **Writer** ([`BrokerSender`], a flavor of the host's `LinkTx`): encodes each batch on the
//!   host's thread into the TCP flavor's Data frame (the rings' codec: plain bytes for numbers
//!   and declared `Pod` types, postcard otherwise; at most `TARGET_PAYLOAD_BYTES` of payload a
//!   frame, or one larger element alone: a message larger than the server's `max_payload`
//!   fails the run, naming the stream, its size and the limit, before it is sent), a mark
//!   into a Mark frame, the end of stream into an End frame, each with the next seq, and queues
//!   it. The broker's own runtime (below) publishes each frame as one message, with the
//!   message id `<writer epoch>-<seq>` (JetStream drops a repeated id within its duplicate
//!   window) and, unless every earlier frame is confirmed, the previous frame's id as the
//!   expected last id (so a frame never lands before one that failed). A frame stays queued
//!   until its publish acknowledgement (PubAck) came: **at most `max_pending` messages
//!   (default 64) and `max_pending_bytes` (default 16 MiB) await PubAcks per link**; past
//!   that `write` takes nothing and the link is out of credit like any other, until PubAcks
//!   make room (a credit envelope to the host). The stream counts as ended for the writing
//!   host once the End's PubAck came: the broker then holds everything, the reader may be
//!   gone for hours.
//! - **A stream that exists already** (a former run's, or made by hand) is checked when a link
//!   starts (`fit_stream`): another retention, discard policy or subject fails the run naming
//!   the stream and the difference; other limits are set to the `[broker]` ones.
//! - **The stream's limit**: the JetStream stream has `max_bytes` (default 256 MiB) and
//!   optionally `max_messages` and `max_age`, with "discard new" and work-queue retention (a message is removed
//!   once its reader acknowledged it). A publish refused at that limit follows the
//!   connection's policy: `Block` retries it (every 100 ms) and keeps the link out of credit,
//!   so the writing agent waits; `DropNewest`/`DropOldest` drop that message's elements and
//!   count them in `LinkStats::dropped` (marks and the End are never dropped: they wait).
//! - **Reader** ([`spawn_broker_feeder`]): deletes the durable consumer if a former reader
//!   left one and creates it again (deliver all: with work-queue retention, what is left in the
//!   stream is exactly what no reader acknowledged), then pulls messages on the broker's
//!   runtime, validates and decodes each frame into private memory (a malformed frame is an
//!   error of the run naming the stream and subject, never a panic), and hands them to a
//!   feeder thread, which delivers them to the reading host within the input's credit, like a
//!   ring's feeder, and counts as a source until it delivered the end of stream. It stops
//!   pulling while the input's capacity of elements waits for credit, or while the messages
//!   it holds unacknowledged (pulled, delivered, being consumed) have the connection's
//!   `capacity_bytes` of payload and the reading agent's `min_capacity` of elements
//!   (heap-owning elements: 32 Ki `Vec<u8>`s of 64 KiB are 2 GiB). What the client
//!   prefetches is one pull, at most `PULL_BYTES`.
//!
//! - **Nothing lost silently**: each message carries, besides its id, the seq of the writer's
//!   previous frame that the stream is to hold (`Iotstream-Prev`; a frame dropped at the
//!   stream's limit is left out, the frames after it re-published naming the one before it).
//!   The reader checks it against the last frame it took from the same writer epoch: a
//!   mismatch is an error of the run naming the stream, the frames and how many were lost.
//! - **A lost stream** (the server restarted without its store): the writer's publish finds
//!   no stream, the reader's pull no stream or consumer; each makes the stream again, logging
//!   an error, and the reader, seeing a stream made since it started, numbers its messages
//!   afresh. What the old stream held and the reader had not taken then shows as a gap in
//!   `Iotstream-Prev`: an error of the run naming the stream and how many messages were lost.
//! - **Lost deliveries**: the consumer numbers its deliveries one by one (redeliveries too); a
//!   jump means one was lost on the way (a broken connection, a restarted server). The reader
//!   takes nothing after it: it deletes and re-creates the consumer, which sends again, in
//!   stream order, every message not acknowledged; those it holds or consumed are recognised by
//!   their stream sequence.
//!
//! # Where the reader acknowledges, and what may come twice
//!
//! The input's credit route is durable, as for rings and TCP links: credit comes back only
//! once the reading agent consumed the elements and the step's outputs were handed on. The
//! feeder **acknowledges a message once every element of it came back as credit** (a Mark or
//! End message once delivered and everything before it credited). So after a crash of the
//! reading process, its restart (same durable consumer) gets again exactly the messages not
//! acknowledged: those that were in the process (pulled, delivered, or being consumed) and
//! those whose acknowledgement was still on its way. The acknowledgements a reader makes
//! leave in the order it made them, which is stream order (one task publishes them,
//! `feeder.rs` `publish_in_order`; the last ones, at the run's end, only once that task's
//! queue is empty): a crash between two no longer leaves a message behind one acknowledged,
//! which the next reader took for a message the broker lost. (One acknowledgement lost on a
//! broken connection still can: it is sent again only when the broker redelivers the
//! message, after `ACK_WAIT`.) Nothing acknowledged comes again, nothing unacknowledged is
//! lost; **duplicates are bounded by what was mid-processing**: what the
//! process held, at most the input's capacity of elements waiting for credit, the capacity
//! delivered and not consumed, and one pull (`PULL_BATCH` messages) prefetched; never more
//! than the consumer's `max_ack_pending` messages (the capacity plus two pulls), which the
//! server enforces (a message is a writer's batch, up to 256 KiB of payload). While a reader lives, a message redelivered by the broker (acknowledgement
//! timeout) or published twice (a writer's retry outside the duplicate window) is recognised
//! by its `(writer epoch, seq)` and dropped.
//!
//! # The broker's runtime
//!
//! async-nats runs on tokio. The links of a process share one small tokio runtime (one worker
//! thread, `iotstream broker`), made on first use and owned by this module: no actix worker
//! ever runs or waits for broker I/O. What crosses between the hosts' threads and it is a
//! mutex-guarded bounded queue per link (above) and wake-ups. The client reconnects by itself
//! (async-nats: forever, with backoff); a publish that times out meanwhile is sent again with
//! the same id.
//!
//! # Behaviour at the time of writing
//!
//! - One NATS connection per link end; PubAck timeout 5 s; a broker unreachable at start is
//!   retried for `connect_wait` (default 60 s), then the run fails naming the server. A server
//!   that refuses the credentials (token, user and password, credentials file) or a TLS
//!   handshake that fails (a certificate not signed by `tls_ca`, a server without TLS) fails
//!   the run at once, naming the server and what was wrong: another attempt would not change
//!   it.
//! - After a normal end the reading process exits only once its last acknowledgements went
//!   out (flushed; at most 3 s): a message whose acknowledgement is lost at exit would stay
//!   in the stream and come first to the next run's reader.
//! - A drain of the reading process ends its input after what was delivered; what the writer
//!   publishes after stays in the broker for the reader's next run. A drain of the writing
//!   process ends its stream as usual (the End goes through the broker).
//! - The broker keeps a connection's unconsumed messages across runs of the application: a new
//!   run's reader first gets what the last run left (that is the durability). To start afresh,
//!   delete the stream (`nats stream rm <name>`).

pub(crate) mod feeder;
pub(crate) mod writer;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use sha2::{Digest, Sha256};

pub(crate) use feeder::{spawn_broker_feeder, BrokerFeederSpec};
pub(crate) use writer::{BrokerSender, BrokerWriterSpec};

/// How broker links reach the server and size their streams; from the deployment file's
/// `[broker]` section or [`crate::Graph::broker`].
#[derive(Clone)]
pub(crate) struct BrokerSettings {
    /// The server, `nats://host:port` (`tls://` for TLS), or several separated by commas.
    pub url: String,
    /// A token (read from the deployment's `token_file`).
    pub token: Option<String>,
    /// A user name and its password (the deployment's `user`, and `password_file` read).
    pub user: Option<(String, String)>,
    /// A NATS credentials file (JWT and nkey seed).
    pub creds: Option<PathBuf>,
    /// TLS towards the server.
    pub tls: Option<BrokerTls>,
    /// The JetStream stream's byte limit (per connection).
    pub max_bytes: i64,
    /// The JetStream stream's age limit (`None`: none).
    pub max_age: Option<Duration>,
    /// The JetStream stream's message limit (`None`: none).
    pub max_messages: Option<i64>,
    /// Messages published and not yet acknowledged by the server, per link.
    pub max_pending: usize,
    /// Payload bytes published and not yet acknowledged by the server, per link (at least one
    /// message always goes).
    pub max_pending_bytes: usize,
    /// How long a link waits for the server at start before the run fails.
    pub connect_wait: Duration,
}

/// Shows no secret: the token and the password are said to be there, not shown.
impl std::fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSettings")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<secret>"))
            .field("user", &self.user.as_ref().map(|(u, _)| (u, "<secret>")))
            .field("creds", &self.creds)
            .field("tls", &self.tls)
            .field("max_bytes", &self.max_bytes)
            .field("max_age", &self.max_age)
            .field("max_messages", &self.max_messages)
            .field("max_pending", &self.max_pending)
            .field("max_pending_bytes", &self.max_pending_bytes)
            .field("connect_wait", &self.connect_wait)
            .finish()
    }
}

/// TLS towards the NATS server (rustls, ring).
#[derive(Debug, Clone, Default)]
pub(crate) struct BrokerTls {
    /// PEM file of the CA that signed the server's certificate.
    pub ca: Option<PathBuf>,
    /// PEM files of this client's certificate and key, for a server that asks for one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// What is wrong with a broker URL list (`nats://HOST:PORT` or `tls://HOST:PORT`, several
/// separated by commas), said without showing a password it may hold; `None` if nothing.
pub(crate) fn url_problem(url: &str) -> Option<String> {
    let bad = url.split(',').map(str::trim).find(|one| {
        !(one.starts_with("nats://") || one.starts_with("tls://")) || one.len() <= "nats://".len()
    });
    // A user or password written in the URL would be ignored by the client (and a password
    // does not belong in a file or a log line): said, not shown.
    let userinfo = url.split(',').map(str::trim).any(|one| {
        one.split_once("://")
            .is_some_and(|(_, rest)| rest.split('/').next().unwrap_or("").contains('@'))
    });
    match bad {
        Some(one) => Some(format!(
            "must be nats://HOST:PORT or tls://HOST:PORT (several separated by commas), found '{one}'"
        )),
        None if userinfo => Some(
            "must not hold a user or password (USER@HOST): name them apart (the deployment's 'user' and 'password_file', or BrokerOptions::user)"
                .to_string(),
        ),
        None => url
            .split(',')
            .map(str::trim)
            .find_map(|one| authority_problem(one).map(|why| format!("{why} in '{one}'"))),
    }
}

/// What is wrong with the `HOST[:PORT]` of one broker URL (known to start with a scheme and
/// to hold no user): a missing host, white space in it, a port that is not one (the client
/// would take a port out of range for its default, or fail only when the run starts).
fn authority_problem(one: &str) -> Option<String> {
    let rest = one.split_once("://")?.1;
    let authority = rest.split('/').next().unwrap_or("");
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, tail)) if tail.is_empty() || tail.starts_with(':') => {
                (host, tail.strip_prefix(':'))
            }
            _ => return Some("an IPv6 address must be written [ADDRESS]:PORT".into()),
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Some("no host".into());
    }
    if host.contains(char::is_whitespace) {
        return Some(format!("the host '{host}' holds white space"));
    }
    match port.map(str::parse::<u16>) {
        Some(Ok(0)) | Some(Err(_)) => Some(format!(
            "the port '{}' is not a port (1 to 65535)",
            port.unwrap_or_default()
        )),
        _ => None,
    }
}

impl BrokerSettings {
    /// The defaults for the server at `url`.
    pub(crate) fn new(url: &str) -> Self {
        BrokerSettings {
            url: url.to_string(),
            token: None,
            user: None,
            creds: None,
            tls: None,
            max_bytes: 256 << 20,
            max_age: None,
            max_messages: None,
            max_pending: 64,
            max_pending_bytes: 16 << 20,
            connect_wait: Duration::from_secs(60),
        }
    }
}

/// How long a publish waits for its PubAck before it is sent again.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The payload a writer puts in one message when elements are small: close to the server's
/// default `max_payload` (1 MiB, which also counts the headers), so that a stream of small
/// elements costs as few messages and PubAcks as a publisher of 1 MiB batches (with 256 KiB,
/// four times as many: 0.64x raw async-nats for 1 KiB elements in one run, 0.75-0.81x with
/// this). A server configured with a smaller `max_payload` refuses such messages: keep it
/// at its default or above.
const TARGET_PAYLOAD_BYTES: usize = 960 << 10;

/// The most bytes one pull asks for: a bound on what the client buffers (its own limit is
/// 64 MiB, past which the server calls it a slow consumer and drops messages for it), and
/// above the largest message (an element of `MAX_ELEMENT_BYTES` alone).
pub(crate) const PULL_BYTES: usize = 32 << 20;

/// Messages the reader asks for in one pull.
pub(crate) const PULL_BATCH: usize = 64;

/// The longest any broker thread or task waits before it looks at its run and its link again.
const SLICE: Duration = Duration::from_millis(100);

/// The header that carries a message's id (JetStream's de-duplication), `Nats-Msg-Id`. The
/// client's constant: a name made from a string would not equal the one parsed from the wire.
const MSG_ID: async_nats::HeaderName = async_nats::header::NATS_MESSAGE_ID;

/// The header that names the writer's previous frame the stream holds (frames dropped at the
/// stream's limit are left out): the reader checks it, so that a message the broker lost is
/// an error, never a silent gap.
const PREV: &str = "Iotstream-Prev";

/// The header naming the fingerprint of the element type a message holds
/// ([`type_fingerprint`](crate::transport::codec::type_fingerprint)), 16 hex digits: a reader of
/// another type refuses the message (a stream a former version of the application left).
const ELEMENT_TYPE: &str = "Iotstream-Type";

/// The header that makes a publish conditional on the stream's last message id,
/// `Nats-Expected-Last-Msg-Id`.
const EXPECTED_LAST_ID: async_nats::HeaderName = async_nats::header::NATS_EXPECTED_LAST_MESSAGE_ID;

/// The NATS names of one connection (see the module docs, "Names").
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BrokerNames {
    /// The JetStream stream.
    pub stream: String,
    /// The one subject of that stream.
    pub subject: String,
    /// The durable pull consumer of the reading input.
    pub consumer: String,
}

impl BrokerNames {
    /// The names of the connection of application `app` from output `port` of agent `agent`
    /// to input `input` of agent `reader`.
    pub(crate) fn new(app: &str, agent: &str, port: &str, reader: &str, input: &str) -> Self {
        let t = |s: &str| sanitize(s, 64);
        let stream = sanitize(
            &format!("IOTSTREAM_{app}_{agent}_{port}__{reader}_{input}"),
            200,
        );
        BrokerNames {
            stream,
            subject: format!(
                "iotstream.{}.{}.{}.{}.{}",
                t(app),
                t(agent),
                t(port),
                t(reader),
                t(input)
            ),
            consumer: sanitize(&format!("{reader}_{input}"), 200),
        }
    }
}

/// `name` with every character outside `A-Z a-z 0-9 - _` replaced by `_`, cut to `max` bytes;
/// if anything changed, an 8-hex-digit hash of `name` is appended (see the module docs).
pub(crate) fn sanitize(name: &str, max: usize) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out != name || out.len() > max || out.is_empty() {
        out.truncate(max.saturating_sub(9));
        push_hash(&mut out, name.as_bytes());
    }
    out
}

/// Appends `_` and an 8-hex-digit hash of `bytes` to `name`.
fn push_hash(name: &mut String, bytes: &[u8]) {
    let digest = Sha256::digest(bytes);
    name.push('_');
    for b in &digest[..4] {
        name.push_str(&format!("{b:02x}"));
    }
}

/// Spawns a link's task (`thread` says which, for the message) on the broker runtime. A panic
/// in it, a defect, fails the run naming the connection, as on a link's own thread
/// ([`link_thread`](crate::transport::mailbox::link_thread)); tokio alone would end the task
/// quietly, and its agents would wait for ever.
pub(crate) fn spawn_link_task(
    rt: &tokio::runtime::Runtime,
    run: crate::transport::mailbox::Run,
    label: String,
    thread: &'static str,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let handle = rt.spawn(task);
    rt.spawn(async move {
        if let Err(e) = handle.await {
            if e.is_panic() {
                let p = e.into_panic();
                run.fail(crate::error::Error::Runtime {
                    detail: format!(
                        "connection {label}: its {thread} task panicked: {}",
                        crate::error::panic_message(&*p)
                    ),
                });
            }
        }
    });
}

/// The broker links' runtime (see the module docs, "The broker's runtime").
pub(crate) fn runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("iotstream broker")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the broker links' runtime: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// The client options `settings` asks for: name, credentials, TLS. Made afresh for each
/// connection attempt (a `ConnectOptions` is used up by `connect`).
async fn connect_options(
    settings: &BrokerSettings,
    label: &str,
) -> Result<async_nats::ConnectOptions, String> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("iotstream {label}"))
        .connection_timeout(Duration::from_secs(3));
    if let Some(token) = &settings.token {
        opts = opts.token(token.clone());
    }
    if let Some((user, password)) = &settings.user {
        opts = opts.user_and_password(user.clone(), password.clone());
    }
    if let Some(creds) = &settings.creds {
        opts = opts.credentials_file(creds).await.map_err(|e| {
            format!(
                "cannot read the NATS credentials file {}: {e}",
                creds.display()
            )
        })?;
    }
    if let Some(tls) = &settings.tls {
        opts = opts.require_tls(true);
        if let Some(ca) = &tls.ca {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
    }
    Ok(opts)
}

/// What a failed connection attempt means.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// Nobody answers yet, or the connection broke on the way: try again until `connect_wait`.
    Transient,
    /// The server refused the credentials: another attempt with the same ones fails alike.
    Credentials,
    /// TLS failed (the server's certificate is not trusted, or one side speaks no TLS).
    Tls,
    /// A URL that does not parse, a client certificate or key that cannot be read.
    Setup,
}

/// Classifies a failed connection attempt. A TLS handshake that failed reaches async-nats as
/// an I/O error holding rustls' error: it is looked for along the error's chain.
fn refusal(e: &async_nats::ConnectError) -> Refusal {
    use async_nats::ConnectErrorKind as K;
    match e.kind() {
        K::AuthorizationViolation | K::Authentication => Refusal::Credentials,
        K::Tls => Refusal::Tls,
        K::ServerParse => Refusal::Setup,
        _ if holds_tls_error(e) => Refusal::Tls,
        _ => Refusal::Transient,
    }
}

/// Whether `e`, or an error it was caused by (through `source` and inside I/O errors), is
/// rustls' error.
fn holds_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    // Ends: an error chain is finite (each step goes to a cause).
    while let Some(err) = next {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if holds_tls_error(inner) {
                return true;
            }
        }
        next = err.source();
    }
    false
}

/// How this client introduced itself, for an error about refused credentials.
fn credentials_used(settings: &BrokerSettings) -> String {
    if let Some((user, _)) = &settings.user {
        format!("user '{user}' with the password from password_file")
    } else if settings.token.is_some() {
        "the token from token_file".to_string()
    } else if let Some(creds) = &settings.creds {
        format!("the credentials file {}", creds.display())
    } else {
        "no credentials (the server asks for some: set token_file, user and password_file, \
         or creds in [broker])"
            .to_string()
    }
}

/// Connects to the server `settings` names (on the broker runtime). A server that does not
/// answer is tried again for `connect_wait`; credentials the server refuses and a failed TLS
/// handshake fail at once. Every error names the server and what went wrong. Once connected,
/// the client reconnects by itself, forever.
pub(crate) async fn connect(
    settings: &BrokerSettings,
    label: &str,
) -> Result<async_nats::Client, String> {
    let url = settings.url.as_str();
    let deadline = tokio::time::Instant::now() + settings.connect_wait;
    let mut pause = Duration::from_millis(100);
    // Ends: on success, on a refusal no retry changes, or at the deadline (each pass waits
    // at most the connection timeout and a pause of at most a second).
    loop {
        let opts = connect_options(settings, label).await?;
        let e = match opts.connect(url).await {
            Ok(client) => return Ok(client),
            Err(e) => e,
        };
        match refusal(&e) {
            Refusal::Credentials => {
                return Err(format!(
                    "the NATS server {url} refused the credentials ({e}); this client gave {}",
                    credentials_used(settings)
                ))
            }
            Refusal::Tls => {
                return Err(format!(
                    "TLS with the NATS server {url} failed ({e}); {}",
                    if settings.tls.as_ref().is_some_and(|t| t.ca.is_some()) {
                        "is the server's certificate signed by the CA in tls_ca, for the host \
                         in url, and does the server speak TLS (a tls block in its configuration)?"
                    } else {
                        "a server whose certificate is signed by a CA of its own needs that CA \
                         as tls_ca in [broker]"
                    }
                ))
            }
            Refusal::Setup => return Err(format!("cannot connect to the NATS server {url}: {e}")),
            Refusal::Transient => {}
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(format!(
                "the NATS server {url} did not answer within {} s (connect_wait_ms): {e}",
                settings.connect_wait.as_secs_f64()
            ));
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// The largest message a link's stream takes: what one pull of its reader takes
/// ([`PULL_BYTES`]; an iotstream message never is larger: an element of `MAX_ELEMENT_BYTES`
/// alone fits), or the server's `max_payload` if that is less (no message can be larger, and a
/// stream's limit above it is no use).
fn max_message_size(js: &async_nats::jetstream::Context) -> i32 {
    let payload = js.client().server_info().max_payload;
    match payload {
        0 => PULL_BYTES as i32,
        p => p.min(PULL_BYTES) as i32,
    }
}

/// The JetStream stream of a connection, as both ends declare it; `max_message_size` as
/// [`max_message_size`] says.
pub(crate) fn stream_config(
    names: &BrokerNames,
    settings: &BrokerSettings,
    max_message_size: i32,
) -> async_nats::jetstream::stream::Config {
    use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
    Config {
        name: names.stream.clone(),
        subjects: vec![names.subject.clone()],
        retention: RetentionPolicy::WorkQueue,
        discard: DiscardPolicy::New,
        storage: StorageType::File,
        max_bytes: settings.max_bytes,
        max_age: settings.max_age.unwrap_or_default(),
        max_messages: settings.max_messages.unwrap_or(-1),
        duplicate_window: Duration::from_secs(120),
        // A larger message would be pulled by no reader and skipped silently once the pull
        // expired: the server refuses it at the publish instead.
        max_message_size,
        ..Default::default()
    }
}

/// Makes sure the connection's JetStream stream exists (either end may come first), retrying
/// every second for `connect_wait`.
pub(crate) async fn ensure_stream(
    js: &async_nats::jetstream::Context,
    names: &BrokerNames,
    settings: &BrokerSettings,
    stopped: impl Fn() -> bool,
) -> Result<async_nats::jetstream::stream::Stream, String> {
    let deadline = tokio::time::Instant::now() + settings.connect_wait;
    let mut last;
    // Ends: at the deadline, or when the run stops, or once the stream exists.
    loop {
        match js
            .get_or_create_stream(stream_config(names, settings, max_message_size(js)))
            .await
        {
            Ok(s) => return fit_stream(js, s, names, settings).await,
            Err(e) => last = e.to_string(),
        }
        if stopped() || tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "cannot create the JetStream stream '{}' on {}: {last} (is JetStream on? \
                 nats-server -js)",
                names.stream, settings.url
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Checks a stream that already existed (a former run made it, or a user beforehand) against
/// what the link needs. Another retention, discard policy or subject would break the link's
/// guarantees (with limits retention every run's reader got every former run's messages
/// again): an error naming the stream and the difference. Other limits (`max_bytes`,
/// `max_messages`, `max_age_s`, changed in the deployment since) are applied to it, keeping
/// what else it has (replicas raised by hand, say).
async fn fit_stream(
    js: &async_nats::jetstream::Context,
    stream: async_nats::jetstream::stream::Stream,
    names: &BrokerNames,
    settings: &BrokerSettings,
) -> Result<async_nats::jetstream::stream::Stream, String> {
    let want = stream_config(names, settings, max_message_size(js));
    let have = &stream.cached_info().config;
    let mut wrong = Vec::new();
    if have.retention != want.retention {
        wrong.push(format!(
            "retention {:?} instead of {:?}",
            have.retention, want.retention
        ));
    }
    if have.discard != want.discard {
        wrong.push(format!(
            "discard {:?} instead of {:?}",
            have.discard, want.discard
        ));
    }
    if have.subjects != want.subjects {
        wrong.push(format!(
            "subjects {:?} instead of {:?}",
            have.subjects, want.subjects
        ));
    }
    if have.subjects != want.subjects && wrong.len() == 1 {
        // Only the subject differs: another connection's stream, whose name reads like this
        // one's (`_` joins the parts, and parts may hold it).
        return Err(format!(
            "the JetStream stream '{}' on {} belongs to another connection (subjects {:?}; \
             this one's is {:?}): their application, agent, port and input names, joined by \
             '_', read alike. Rename one of them (a name without '_' is never taken for \
             another)",
            names.stream, settings.url, have.subjects, want.subjects
        ));
    }
    if !wrong.is_empty() {
        return Err(format!(
            "the JetStream stream '{}' on {} exists with other settings: {}; delete it (nats \
             stream rm {}) and the link makes it again, or make it with these",
            names.stream,
            settings.url,
            wrong.join(", "),
            names.stream
        ));
    }
    let message_size_fits =
        have.max_message_size > 0 && have.max_message_size <= want.max_message_size;
    if have.max_bytes == want.max_bytes
        && have.max_messages == want.max_messages
        && have.max_age == want.max_age
        && message_size_fits
    {
        return Ok(stream);
    }
    let mut config = have.clone();
    config.max_bytes = want.max_bytes;
    config.max_messages = want.max_messages;
    config.max_age = want.max_age;
    if !message_size_fits {
        config.max_message_size = want.max_message_size;
    }
    js.update_stream(&config).await.map_err(|e| {
        format!(
            "cannot change the limits of the JetStream stream '{}' on {} (max_bytes {}, \
             max_messages {}, max_age {:?}) to those of [broker]: {e}",
            names.stream, settings.url, have.max_bytes, have.max_messages, have.max_age
        )
    })?;
    tracing::info!(
        "JetStream stream '{}': limits changed to those of [broker] (max_bytes {} -> {}, \
         max_messages {} -> {}, max_age {:?} -> {:?}, max_msg_size {} -> {})",
        names.stream,
        have.max_bytes,
        want.max_bytes,
        have.max_messages,
        want.max_messages,
        have.max_age,
        want.max_age,
        have.max_message_size,
        config.max_message_size
    );
    Ok(stream)
}

/// The message id of frame `seq` of writer `epoch`.
fn msg_id(epoch: u64, seq: u64) -> String {
    format!("{epoch:016x}-{seq}")
}

/// The writer epoch and seq of a message id, if it is one of ours.
fn parse_msg_id(id: &str) -> Option<(u64, u64)> {
    let (e, s) = id.split_once('-')?;
    if e.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(e, 16).ok()?, s.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_nats_rules_and_stay_apart() {
        let n = BrokerNames::new("quake", "detect", "out", "alerts", "in");
        assert_eq!(n.stream, "IOTSTREAM_quake_detect_out__alerts_in");
        assert_eq!(n.subject, "iotstream.quake.detect.out.alerts.in");
        assert_eq!(n.consumer, "alerts_in");
        // `_` joins the parts of a stream's name: parts holding one may read alike, their
        // subjects never do.
        let (x, y) = (
            BrokerNames::new("a_b", "c", "out", "sink", "in"),
            BrokerNames::new("a", "b_c", "out", "sink", "in"),
        );
        assert_eq!(x.stream, y.stream);
        assert_ne!(x.subject, y.subject);
        let a = BrokerNames::new("my app", "a.b", "out", "c*", "in>");
        for name in [&a.stream, &a.consumer] {
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{name}"
            );
        }
        assert_eq!(a.subject.split('.').count(), 6, "{}", a.subject);
        let b = BrokerNames::new("my_app", "a_b", "out", "c_", "in_");
        assert_ne!(
            a.stream, b.stream,
            "replaced characters do not make names collide"
        );
        assert!(sanitize(&"x".repeat(500), 200).len() <= 200);
    }

    #[test]
    fn message_ids_round_trip() {
        assert_eq!(parse_msg_id(&msg_id(0xabc, 42)), Some((0xabc, 42)));
        assert_eq!(parse_msg_id("12-3"), None);
        assert_eq!(parse_msg_id("nonsense"), None);
    }

    /// A broker URL that cannot work is refused when the application is built, naming what is
    /// wrong (found by a user's audit: a port out of range was found only at the run's start,
    /// and the client may take it for its default port).
    #[test]
    fn a_url_whose_host_or_port_cannot_work_is_refused() {
        for good in [
            "nats://127.0.0.1:4222",
            "nats://nats.example.org",
            "tls://[::1]:4222",
            "nats://a:4222, nats://b:4223",
        ] {
            assert_eq!(url_problem(good), None, "{good}");
        }
        for (bad, why) in [
            ("nats://127.0.0.1:403559", "the port '403559' is not a port"),
            ("nats://127.0.0.1:0", "the port '0' is not a port"),
            ("nats://host:x", "the port 'x' is not a port"),
            ("nats://:4222", "no host"),
            (
                "nats://my host:4222",
                "the host 'my host' holds white space",
            ),
            ("tls://[::1", "IPv6"),
            ("nats://a:4222,nats://b:99999", "in 'nats://b:99999'"),
        ] {
            let said = url_problem(bad).unwrap_or_default();
            assert!(said.contains(why), "{bad}: {said}");
        }
    }
}
