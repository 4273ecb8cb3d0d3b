//! Posting a stream to a web hook: JSON batches over HTTP, with retries and a bound.
//!
//! [`Graph::sink_webhook`] sends each batch of its input to a URL as `POST` requests whose
//! body is a JSON array of the elements (`serde_json`), `Content-Type: application/json`. For
//! alerting: a chat's incoming web hook, an incident tool, a small service of your own.
//!
//! # Guarantees
//!
//! - **Bounded requests.** A request holds at most [`WebhookOptions::max_elements`] elements
//!   and at most [`WebhookOptions::max_bytes`] bytes of body; a larger batch is split, in
//!   order. An element whose JSON alone is larger than `max_bytes` is not sent: it is counted
//!   undelivered (or fails the application), naming its index in the stream. An element
//!   that cannot be written as JSON at all (a map whose keys cannot be written as strings:
//!   tuples, structs or a NaN, say; serde_json writes integer, boolean and finite float keys
//!   as strings) stops the application, naming its index: that is a program's mistake, not
//!   the hook's. Either way the elements before it are posted first. A float that is NaN or infinite is sent as `null` (serde_json's rule: JSON
//!   has no such numbers).
//! - **Order.** Requests go one at a time, in stream order; a request is sent again only after
//!   it failed, and the next one waits for it.
//! - **Retries with a bound.** A request that fails (no connection, a timeout, a `5xx`, `408` or
//!   `429` answer) is tried again after a wait that starts at [`WebhookOptions::backoff`] and
//!   doubles each time up to [`WebhookOptions::backoff_max`], [`WebhookOptions::attempts`]
//!   times in all. Any other answer outside `2xx` (a `4xx`: the hook refuses this body) is not
//!   tried again. A request that was sent and answered with `2xx` counts as delivered.
//! - **Nothing lost silently.** What could not be delivered is counted in
//!   [`AgentStats::undelivered`](crate::AgentStats::undelivered) (and the live view's
//!   `iotstream_agent_undelivered_total`) with a warning naming the URL and the cause, or, with
//!   [`Undelivered::Fail`], stops the application with an error saying the same.
//! - **Never in other agents' way.** The sink runs on a thread of its own; while it waits for
//!   the hook, its input connection fills up to its capacity (a bounded queue) and then holds
//!   its writer back, or drops and counts, as the connection's [`Policy`](crate::Policy) says.
//!
//! A stop (Ctrl-C, [`Running::stop`](crate::Running::stop)) drains: what the sink's input
//! holds is still posted, each request with its tries, so a drain towards a hook that is down
//! takes up to `attempts` × (`timeout` + `backoff_max`) per request.
//!
//! A request that timed out may still have reached the hook: a retry may then deliver the same
//! elements twice. Make the receiver idempotent if that matters (an alert's id, say).

use std::time::Duration;

use crate::agent::{Agent, Inputs, Outputs};
use crate::error::AgentError;
use crate::graph::Graph;
use crate::stream::{Element, Input, Stream};

/// What [`Graph::sink_webhook`] does with elements it could not deliver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Undelivered {
    /// Count them ([`AgentStats::undelivered`](crate::AgentStats::undelivered)), warn, and
    /// go on with the next request.
    #[default]
    Count,
    /// Stop the application with an error naming the URL, the elements and the cause.
    Fail,
}

/// How [`Graph::sink_webhook`] posts. Build it from the default with the methods below (or set
/// the fields).
///
/// ```
/// use std::time::Duration;
/// use iotstream::{Undelivered, WebhookOptions};
/// let options = WebhookOptions::default()
///     .max_elements(100)
///     .attempts(3)
///     .timeout(Duration::from_secs(5))
///     .header("Authorization", "Bearer s3cr3t")
///     .undelivered(Undelivered::Fail);
/// assert_eq!(options.max_elements, 100);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookOptions {
    /// The most elements in one request (default 500).
    pub max_elements: usize,
    /// The most bytes of body in one request (default 1 MiB).
    pub max_bytes: usize,
    /// How many times a request is tried in all before its elements count as undelivered
    /// (default 5; at least 1).
    pub attempts: u32,
    /// The wait before the first retry, doubled for each next one (default 200 ms).
    pub backoff: Duration,
    /// The longest wait between two tries (default 10 s).
    pub backoff_max: Duration,
    /// The longest one try may take, from connecting to the end of the answer (default 10 s).
    pub timeout: Duration,
    /// Headers sent with every request (an `Authorization`, say), besides `Content-Type`.
    pub headers: Vec<(String, String)>,
    /// What to do with elements that could not be delivered (default: count them).
    pub undelivered: Undelivered,
}

impl std::fmt::Debug for WebhookOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values may be secrets: their names only.
        let headers: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("WebhookOptions")
            .field("max_elements", &self.max_elements)
            .field("max_bytes", &self.max_bytes)
            .field("attempts", &self.attempts)
            .field("backoff", &self.backoff)
            .field("backoff_max", &self.backoff_max)
            .field("timeout", &self.timeout)
            .field("headers", &headers)
            .field("undelivered", &self.undelivered)
            .finish()
    }
}

impl Default for WebhookOptions {
    fn default() -> Self {
        WebhookOptions {
            max_elements: 500,
            max_bytes: 1 << 20,
            attempts: 5,
            backoff: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            headers: Vec::new(),
            undelivered: Undelivered::Count,
        }
    }
}

impl WebhookOptions {
    /// Sets [`WebhookOptions::max_elements`].
    pub fn max_elements(mut self, n: usize) -> Self {
        self.max_elements = n;
        self
    }
    /// Sets [`WebhookOptions::max_bytes`].
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = n;
        self
    }
    /// Sets [`WebhookOptions::attempts`].
    pub fn attempts(mut self, n: u32) -> Self {
        self.attempts = n;
        self
    }
    /// Sets [`WebhookOptions::backoff`] and [`WebhookOptions::backoff_max`].
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first;
        self.backoff_max = max;
        self
    }
    /// Sets [`WebhookOptions::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// Adds a header to [`WebhookOptions::headers`].
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// Sets [`WebhookOptions::undelivered`].
    pub fn undelivered(mut self, what: Undelivered) -> Self {
        self.undelivered = what;
        self
    }
}

/// Why a request was not delivered, and whether trying again may help.
struct Failure {
    cause: String,
    retry: bool,
}

struct WebhookSink<T> {
    input: Input<T>,
    url: String,
    /// `url` as messages show it: without a password.
    shown: String,
    options: WebhookOptions,
    client: ureq::Agent,
    /// The request being built: `[` and the elements so far, comma separated.
    body: Vec<u8>,
    /// Elements in `body`, and the stream index of its first.
    in_body: usize,
    first: u64,
    /// One element's JSON (kept from element to element).
    element: Vec<u8>,
    /// Elements seen so far (the stream index of the next).
    seen: u64,
    /// Elements given up on in this step.
    undelivered: u64,
}

impl<T: Element> WebhookSink<T> {
    fn new(input: Input<T>, url: String, options: WebhookOptions) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(options.timeout))
            // Statuses are ours to judge (which ones to retry).
            .http_status_as_error(false)
            // A POST redirected elsewhere is not what was configured.
            .max_redirects(0)
            .build();
        WebhookSink {
            input,
            shown: redacted(&url),
            url,
            options,
            client: ureq::Agent::new_with_config(config),
            body: Vec::new(),
            in_body: 0,
            first: 0,
            element: Vec::new(),
            seen: 0,
            undelivered: 0,
        }
    }

    /// Adds `x` to the request being built, sending that first if `x` would not fit.
    fn add(&mut self, x: &T) -> Result<(), AgentError> {
        let index = self.seen;
        self.seen += 1;
        self.element.clear();
        serde_json::to_writer(&mut self.element, x)
            .map_err(|e| format!("sink_webhook: element {index} cannot be written as JSON: {e}"))?;
        // `[`, the element, `]`.
        if self.element.len() + 2 > self.options.max_bytes {
            let cause = format!(
                "element {index} is {} bytes of JSON, more than max_bytes ({})",
                self.element.len(),
                self.options.max_bytes
            );
            return self.give_up(1, &cause);
        }
        // `,`, the element, `]`.
        let full = self.in_body == self.options.max_elements
            || self.body.len() + 1 + self.element.len() + 1 > self.options.max_bytes;
        if self.in_body > 0 && full {
            self.send()?;
        }
        if self.in_body == 0 {
            self.body.clear();
            self.body.push(b'[');
            self.first = index;
        } else {
            self.body.push(b',');
        }
        self.body.extend_from_slice(&self.element);
        self.in_body += 1;
        Ok(())
    }

    /// Sends the request built so far (with its retries), if any.
    fn send(&mut self) -> Result<(), AgentError> {
        if self.in_body == 0 {
            return Ok(());
        }
        self.body.push(b']');
        let n = self.in_body;
        self.in_body = 0;
        let mut wait = self.options.backoff;
        let mut tries = 0;
        let failure = loop {
            tries += 1;
            let failure = match self.post() {
                Ok(()) => return Ok(()),
                Err(f) => f,
            };
            if !failure.retry || tries >= self.options.attempts.max(1) {
                break failure;
            }
            tracing::debug!(
                "sink_webhook: {} (try {tries}), trying again in {wait:?}",
                failure.cause
            );
            std::thread::sleep(wait);
            wait = (wait * 2).min(self.options.backoff_max);
        };
        let (first, last) = (self.first, self.first + n as u64 - 1);
        let cause = format!(
            "elements {first} to {last} ({n}) not delivered after {tries} tries: {}",
            failure.cause
        );
        self.give_up(n as u64, &cause)
    }

    /// One try of the request in `body`.
    fn post(&self) -> Result<(), Failure> {
        let mut request = self.client.post(&self.url).content_type("application/json");
        for (k, v) in &self.options.headers {
            request = request.header(k, v);
        }
        let url = &self.shown;
        match request.send(&self.body[..]) {
            Ok(response) => {
                let status = response.status().as_u16();
                if (200..300).contains(&status) {
                    return Ok(());
                }
                Err(Failure {
                    cause: format!("POST {url} answered {status}"),
                    retry: status >= 500 || status == 408 || status == 429,
                })
            }
            Err(e) => Err(Failure {
                cause: format!("POST {url} failed: {e}"),
                // Transport failures (refused, reset, timed out, DNS) may pass; a URL or a
                // header that is not valid never will.
                retry: !matches!(e, ureq::Error::BadUri(_) | ureq::Error::Http(_)),
            }),
        }
    }

    fn give_up(&mut self, n: u64, cause: &str) -> Result<(), AgentError> {
        match self.options.undelivered {
            Undelivered::Count => {
                tracing::warn!("sink_webhook to {}: {cause}", self.shown);
                self.undelivered += n;
                Ok(())
            }
            Undelivered::Fail => Err(format!("sink_webhook to {}: {cause}", self.shown).into()),
        }
    }
}

impl<T: Element> Agent for WebhookSink<T> {
    fn step(&mut self, inputs: &mut Inputs<'_>, _: &mut Outputs<'_>) -> Result<(), AgentError> {
        let new = inputs.slice(&self.input);
        let n = new.len();
        let mut result = Ok(());
        for x in new {
            result = self.add(x);
            if result.is_err() {
                break;
            }
        }
        // A batch goes now: an alert never waits for the next one. So do the elements before
        // one that stops the application: they were accepted, and the hook is not at fault.
        let sent = self.send();
        inputs.consume(&self.input, n);
        inputs.count_undelivered(std::mem::take(&mut self.undelivered));
        match (result, sent) {
            (Err(stop), Err(before)) => Err(format!("{stop}; and before it: {before}").into()),
            (result, sent) => result.and(sent),
        }
    }
}

/// Why `url` cannot be posted to, if it cannot: checked when the application is built, since a
/// URL that is not valid never becomes valid by trying again.
fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("it must start with http:// or https://".to_string());
    }
    let uri: ureq::http::Uri = url.parse().map_err(|e| format!("not a valid URL: {e}"))?;
    let authority = match uri.authority() {
        Some(a) if !a.host().is_empty() => a.as_str(),
        _ => return Err("it names no host".to_string()),
    };
    // A port that is not a number from 0 to 65535 is silently dropped by the URL parser (the
    // request would go to the scheme's default port, 80 or 443): refuse it. Port 0 can never
    // be connected to (as for MQTT brokers).
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some((_, port)) = host_port.rsplit_once(':') {
        if !host_port.ends_with(']') && !port.is_empty() {
            match port.parse::<u16>() {
                Ok(0) => return Err("port 0 is not a port a server can listen on".to_string()),
                Ok(_) => {}
                Err(_) => return Err(format!("port '{port}' is not a number from 1 to 65535")),
            }
        }
    }
    Ok(())
}

/// `url` with the password of its user information (`user:password@`) replaced by `***`, for
/// messages and logs. Works on the text, so also on a URL that does not parse.
fn redacted(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[after_scheme..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let Some((user_info, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    let Some((user, _password)) = user_info.split_once(':') else {
        return url.to_string();
    };
    format!(
        "{}{user}:***@{host}{}",
        &url[..after_scheme],
        &rest[authority_len..]
    )
}

impl Graph {
    /// Posts `stream` to the web hook at `url` (`http://` or `https://`) as JSON arrays of its
    /// elements, one or more requests per batch, with the default [`WebhookOptions`]: at most
    /// 500 elements and 1 MiB per request, 5 tries with backoff, undelivered elements counted.
    /// A URL that can never work (another scheme, no host, port 0 or a port beyond 65535) is
    /// reported when the application is built. Messages show the URL without its password.
    /// See [`Graph::sink_webhook_with`] and the [module documentation](crate::ops::webhook).
    ///
    /// ```no_run
    /// use iotstream::Graph;
    /// #[derive(Clone, serde::Serialize, serde::Deserialize)]
    /// struct Alert { sensor: String, level: f64 }
    ///
    /// let mut g = Graph::new("alerting");
    /// let alerts = g.source_iter("alerts", [Alert { sensor: "pump-3".into(), level: 7.5 }]);
    /// g.sink_webhook("notify", &alerts, "http://127.0.0.1:9000/hooks/alerts");
    /// let metrics = g.run().unwrap();
    /// println!("undelivered: {}", metrics.agent("notify").unwrap().undelivered);
    /// ```
    pub fn sink_webhook<T: Element>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        url: impl Into<String>,
    ) {
        self.sink_webhook_with(name, stream, url, WebhookOptions::default());
    }

    /// [`Graph::sink_webhook`] with explicit [`WebhookOptions`]: request bounds, tries and
    /// backoff, timeout, headers, and whether undelivered elements are counted or fail the
    /// application.
    ///
    /// ```
    /// use std::time::Duration;
    /// use iotstream::{Graph, Undelivered, WebhookOptions};
    /// // A port nobody listens on: every try fails, and the alerts are counted undelivered.
    /// let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    /// let mut g = Graph::new("alerting");
    /// let alerts = g.source_iter("alerts", ["boiler 3 over 95 C".to_string()]);
    /// let options = WebhookOptions::default()
    ///     .attempts(2)
    ///     .backoff(Duration::from_millis(10), Duration::from_secs(1))
    ///     .timeout(Duration::from_secs(5))
    ///     .header("Authorization", "Bearer s3cr3t")
    ///     .undelivered(Undelivered::Count);
    /// g.sink_webhook_with("notify", &alerts, format!("http://127.0.0.1:{port}/alerts"), options);
    /// let metrics = g.run().unwrap();
    /// assert_eq!(metrics.agent("notify").unwrap().undelivered, 1);
    /// ```
    pub fn sink_webhook_with<T: Element>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        url: impl Into<String>,
        options: WebhookOptions,
    ) {
        let url = url.into();
        if let Err(why) = check_url(&url) {
            let shown = redacted(&url);
            self.problem(format!("sink_webhook '{name}': URL '{shown}': {why}"));
        }
        if options.max_elements == 0 {
            self.problem(format!(
                "sink_webhook '{name}': max_elements must be at least 1"
            ));
        }
        if options.max_bytes < 2 {
            self.problem(format!(
                "sink_webhook '{name}': max_bytes must be at least 2 (an empty JSON array)"
            ));
        }
        if options.attempts == 0 {
            self.problem(format!(
                "sink_webhook '{name}': attempts must be at least 1"
            ));
        }
        let input = self.add_agent(name, |p| {
            let input = p.input::<T>("in");
            (WebhookSink::new(input, url, options), input)
        });
        self.connect(stream, &input);
        self.last_agent_on_own_thread();
    }
}
