//! MQTT sources and sinks against a real broker: Debian's `mosquitto`, started by each test on a
//! free loopback port with a configuration file the test writes, and always stopped (a guard
//! whose `Drop` kills and waits for it). A missing `mosquitto` fails the tests (`.ci/run`
//! installs it).

use std::collections::HashSet;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use iotstream::ops::mqtt::{
    MqttBroker, MqttMessage, MqttQos, MqttSink, MqttSource, MqttStats, MqttTopic, OnMalformed,
};
use iotstream::Graph;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde::{Deserialize, Serialize};

/// How long a test waits for something that should happen (a subscription, all messages)
/// before it fails saying what it waited for: a bound against hanging, not a timing check.
const PATIENCE: Duration = Duration::from_secs(60);

fn mosquitto_binary() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).is_file() {
            return p.into();
        }
    }
    panic!("mosquitto is not installed (`apt-get install mosquitto`; .ci/run installs it): the MQTT tests need the real broker");
}

/// A mosquitto broker of this test, on 127.0.0.1:`port`, killed when dropped.
struct Mosquitto {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts mosquitto with `extra` configuration lines (persistence is on, in the test's
    /// folder; queues without a limit, so a burst is never dropped by the broker).
    fn start(extra: &str) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        // Started as root, mosquitto would switch to the user `mosquitto`, which cannot write
        // this test's folder (its log, its persistence) nor read the password file.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root\n"
        } else {
            ""
        };
        let conf = format!(
            "{user}listener {port} 127.0.0.1\n\
             persistence true\n\
             persistence_location {dir}/\n\
             max_queued_messages 0\n\
             max_inflight_messages 100\n\
             log_dest file {dir}/mosquitto.log\n\
             {extra}\n",
            dir = dir.path().display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut m = Mosquitto {
            child: None,
            port,
            dir,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("mosquitto exited at start ({status}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto does not listen on port {}; log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker with SIGTERM (it saves its persistent state) and starts it again on
    /// the same port.
    fn restart(&mut self) {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        child.wait().unwrap();
        self.spawn();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    fn broker(&self, client_id: &str) -> MqttBroker {
        MqttBroker::new("127.0.0.1", self.port, client_id)
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits for `done` (at most [`PATIENCE`]), failing with `what` and the broker's log.
fn wait_for(broker: &Mosquitto, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what}; broker log:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A test client (plain rumqttc) whose connection runs on a thread until dropped; it
/// reconnects after a pause when the broker goes away.
struct TestClient {
    client: Client,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestClient {
    /// Connects with a persistent session; `on_publish` sees each message received;
    /// `subscribe` (QoS 1) is made before this returns (the SubAck came).
    fn new(
        broker: &Mosquitto,
        id: &str,
        subscribe: Option<&str>,
        mut on_publish: impl FnMut(rumqttc::Publish) + Send + 'static,
    ) -> TestClient {
        let mut options = MqttOptions::new(id, "127.0.0.1", broker.port);
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut connection) = Client::new(options, 100);
        let stop = Arc::new(AtomicBool::new(false));
        let (subscribed_tx, subscribed_rx) = std::sync::mpsc::channel();
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match connection.recv_timeout(Duration::from_millis(100)) {
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => on_publish(p),
                    Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(Ok(_)) | Err(rumqttc::RecvTimeoutError::Timeout) => {}
                    Ok(Err(_)) => std::thread::sleep(Duration::from_millis(50)),
                    Err(rumqttc::RecvTimeoutError::Disconnected) => break,
                }
            }
        });
        if let Some(filter) = subscribe {
            client.subscribe(filter, QoS::AtLeastOnce).unwrap();
            subscribed_rx
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|_| panic!("{id}: no SubAck for {filter}"));
        }
        TestClient {
            client,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
        std::thread::sleep(Duration::from_millis(50));
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every index seen on the sink's topics, in a shared set.
fn checker(broker: &Mosquitto, filter: &str) -> (TestClient, Arc<std::sync::Mutex<HashSet<u64>>>) {
    let seen = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let s = Arc::clone(&seen);
    let c = TestClient::new(broker, "checker", Some(filter), move |p| {
        let text = std::str::from_utf8(&p.payload).unwrap().to_string();
        let r: Indexed = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("the sink published '{text}' to {}: {e}", p.topic));
        assert_eq!(
            p.topic,
            format!("out/{}", r.shard),
            "topic from the template"
        );
        s.lock().unwrap().insert(r.index);
    });
    (c, seen)
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Indexed {
    index: u64,
    shard: u64,
}

/// Publishes "0", "1", … "n-1" to `topic` with QoS 1 from a thread.
fn publish_indices(client: Client, topic: &'static str, n: u64) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for i in 0..n {
            client
                .publish(topic, QoS::AtLeastOnce, false, i.to_string())
                .unwrap();
        }
    })
}

#[derive(Clone, Copy, Debug)]
enum Session {
    Persistent,
    Clean,
}

/// source_mqtt (UTF-8) → map → sink_mqtt (JSON, topic template), both QoS 1, the source with a
/// persistent session, the sink with `sink_session`: the graph under test.
fn pipeline(broker: &Mosquitto, sink_session: Session) -> (Graph, MqttStats, MqttStats) {
    let mut g = Graph::new("mqtt_pipeline");
    let source = MqttSource::utf8(
        broker.broker("pipeline-in").persistent_session(),
        ["in/data"],
    )
    .qos(MqttQos::AtLeastOnce);
    let source_stats = source.stats();
    let lines = g.source_mqtt("in", source);
    let indexed = g.map("index", &lines, |s: &String| {
        let index: u64 = s.parse().expect("the test publishes numbers");
        Indexed {
            index,
            shard: index % 7,
        }
    });
    let out = match sink_session {
        Session::Persistent => broker.broker("pipeline-out").persistent_session(),
        Session::Clean => broker.broker("pipeline-out"),
    };
    let sink = MqttSink::json(out, "out/{shard}")
        .qos(MqttQos::AtLeastOnce)
        .max_outstanding(200);
    let sink_stats = g.sink_mqtt("out", &indexed, sink);
    (g, source_stats, sink_stats)
}

fn missing(seen: &HashSet<u64>, n: u64) -> Vec<u64> {
    (0..n).filter(|i| !seen.contains(i)).take(10).collect()
}

#[test]
fn a_hundred_thousand_messages_through_source_map_sink_with_qos_1_none_lost() {
    const N: u64 = 100_000;
    let broker = Mosquitto::start("allow_anonymous true");
    let (_checker, seen) = checker(&broker, "out/#");
    let (g, source_stats, sink_stats) = pipeline(&broker, Session::Persistent);
    let running = g.start().unwrap();
    wait_for(&broker, "the source's subscription", || {
        source_stats.subscribed()
    });

    let publisher = TestClient::new(&broker, "publisher", None, |_| {});
    let publishing = publish_indices(publisher.client.clone(), "in/data", N);
    wait_for(&broker, "every index at the checker", || {
        seen.lock().unwrap().len() as u64 == N
    });
    publishing.join().unwrap();
    running.stop();
    let metrics = running.join().unwrap();

    let seen = seen.lock().unwrap();
    assert_eq!(missing(&seen, N), Vec::<u64>::new());
    assert_eq!(metrics.agent("out").unwrap().undelivered, 0);
    assert!(source_stats.received() >= N);
    assert_eq!(source_stats.malformed(), 0);
    assert!(sink_stats.published() >= N);
    assert_eq!(sink_stats.delivered(), sink_stats.published());
    assert_eq!(sink_stats.undelivered(), 0);
}

#[test]
fn a_broker_restarted_mid_run_loses_nothing_with_qos_1_and_persistent_sessions() {
    broker_restarted_mid_run(Session::Persistent);
}

/// The sink's new connection has no session at the broker: it publishes again what was not
/// acknowledged (rumqttc alone would drop it).
#[test]
fn a_sink_on_a_clean_session_resends_what_was_not_acknowledged_after_a_broker_restart() {
    broker_restarted_mid_run(Session::Clean);
}

fn broker_restarted_mid_run(sink_session: Session) {
    const N: u64 = 30_000;
    let mut broker = Mosquitto::start("allow_anonymous true");
    let (_checker, seen) = checker(&broker, "out/#");
    let (g, source_stats, sink_stats) = pipeline(&broker, sink_session);
    let running = g.start().unwrap();
    wait_for(&broker, "the source's subscription", || {
        source_stats.subscribed()
    });

    let publisher = TestClient::new(&broker, "publisher", None, |_| {});
    let publishing = publish_indices(publisher.client.clone(), "in/data", N);
    wait_for(&broker, "a third of the indices at the checker", || {
        seen.lock().unwrap().len() as u64 >= N / 3
    });
    broker.restart();
    wait_for(
        &broker,
        "every index at the checker after the restart",
        || seen.lock().unwrap().len() as u64 == N,
    );
    publishing.join().unwrap();
    running.stop();
    running.join().unwrap();

    let seen = seen.lock().unwrap();
    assert_eq!(missing(&seen, N), Vec::<u64>::new());
    // The restart was seen: both ends reconnected.
    assert!(source_stats.connections() >= 2, "source reconnected");
    assert!(sink_stats.connections() >= 2, "sink reconnected");
    assert_eq!(sink_stats.undelivered(), 0);
    // Duplicates are allowed with QoS 1, so only "at least".
    assert!(source_stats.received() >= N);
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Reading {
    sensor: String,
    celsius: f64,
}

/// Publishes good readings on `sensors/good` and bad JSON on `sensors/bad`, interleaved.
fn publish_mixed(broker: &Mosquitto, good: u32, bad: u32) -> TestClient {
    let publisher = TestClient::new(broker, "mixed-publisher", None, |_| {});
    for i in 0..good.max(bad) {
        if i < good {
            let r = Reading {
                sensor: format!("s{i}"),
                celsius: 20.0 + f64::from(i),
            };
            let body = serde_json::to_vec(&r).unwrap();
            publisher
                .client
                .publish("sensors/good", QoS::AtLeastOnce, false, body)
                .unwrap();
        }
        if i < bad {
            publisher
                .client
                .publish("sensors/bad", QoS::AtLeastOnce, false, "{not json")
                .unwrap();
        }
    }
    publisher
}

#[test]
fn malformed_payloads_are_counted_and_skipped_naming_the_topic() {
    let broker = Mosquitto::start("allow_anonymous true");
    let mut g = Graph::new("malformed_skip");
    let source = MqttSource::json::<Reading>(broker.broker("skipper"), ["sensors/+"])
        .on_malformed(OnMalformed::Skip);
    let stats = source.stats();
    let readings = g.source_mqtt("readings", source);
    let out = g.collect("out", &readings);
    let running = g.start().unwrap();
    wait_for(&broker, "the source's subscription", || stats.subscribed());
    let _publisher = publish_mixed(&broker, 5, 3);
    wait_for(&broker, "5 readings and 3 malformed", || {
        out.len() == 5 && stats.malformed() == 3
    });
    running.stop();
    running.join().unwrap();
    let got: Vec<String> = out.values().into_iter().map(|r| r.sensor).collect();
    assert_eq!(got, ["s0", "s1", "s2", "s3", "s4"]);
    assert_eq!(stats.received(), 8);
    let problem = stats.last_problem().unwrap();
    assert!(problem.contains("'sensors/bad'"), "{problem}");
}

/// A source subscribed with a wildcard, `with_topic`: each element says which sensor (topic)
/// its reading came from, in the order each sensor published; a malformed payload is still
/// counted and skipped, naming its topic.
#[test]
fn with_topic_elements_carry_the_topic_each_message_came_on() {
    const PER_SENSOR: u64 = 200;
    let broker = Mosquitto::start("allow_anonymous true");
    let mut g = Graph::new("with_topic");
    let source = MqttSource::json::<f64>(broker.broker("by-sensor"), ["sensors/+/temp"])
        .with_topic()
        .qos(MqttQos::AtLeastOnce);
    let stats = source.stats();
    let readings = g.source_mqtt("readings", source);
    let out = g.collect("out", &readings);
    let running = g.start().unwrap();
    wait_for(&broker, "the source's subscription", || stats.subscribed());
    let publisher = TestClient::new(&broker, "sensors", None, |_| {});
    let sensors = ["pump-1", "pump-2", "fan-9"];
    for i in 0..PER_SENSOR {
        for (k, sensor) in sensors.iter().enumerate() {
            let value = (k as u64 * 1000 + i) as f64;
            publisher
                .client
                .publish(
                    format!("sensors/{sensor}/temp"),
                    QoS::AtLeastOnce,
                    false,
                    value.to_string(),
                )
                .unwrap();
        }
    }
    // Another level, not matched by the filter; and a payload that is not a number.
    publisher
        .client
        .publish("sensors/pump-1/humidity", QoS::AtLeastOnce, false, "55")
        .unwrap();
    publisher
        .client
        .publish("sensors/broken/temp", QoS::AtLeastOnce, false, "hot")
        .unwrap();
    let n = PER_SENSOR as usize * sensors.len();
    wait_for(&broker, "every reading and the malformed one", || {
        out.len() >= n && stats.malformed() == 1
    });
    running.stop();
    running.join().unwrap();
    drop(publisher);

    let got: Vec<MqttMessage<f64>> = out.values();
    assert_eq!(
        got.len(),
        n,
        "QoS 1 from one publisher: none lost, none repeated"
    );
    for (k, sensor) in sensors.iter().enumerate() {
        let topic = format!("sensors/{sensor}/temp");
        let values: Vec<f64> = got
            .iter()
            .filter(|m| m.topic == topic)
            .map(|m| m.payload)
            .collect();
        let expected: Vec<f64> = (0..PER_SENSOR)
            .map(|i| (k as u64 * 1000 + i) as f64)
            .collect();
        assert_eq!(values, expected, "the readings of {topic}, in order");
    }
    assert!(got
        .iter()
        .all(|m| m.level(2) == Some("temp") && sensors.contains(&m.level(1).unwrap())));
    let problem = stats.last_problem().unwrap();
    assert!(problem.contains("'sensors/broken/temp'"), "{problem}");
}

#[test]
fn a_malformed_payload_fails_the_source_naming_the_topic_when_asked() {
    let broker = Mosquitto::start("allow_anonymous true");
    let mut g = Graph::new("malformed_fail");
    let source = MqttSource::json::<Reading>(broker.broker("strict"), ["sensors/+"])
        .on_malformed(OnMalformed::Fail);
    let stats = source.stats();
    let readings = g.source_mqtt("readings", source);
    let _out = g.collect("out", &readings);
    let running = g.start().unwrap();
    wait_for(&broker, "the source's subscription", || stats.subscribed());
    let _publisher = publish_mixed(&broker, 2, 1);
    let err = running.join().unwrap_err().to_string();
    eprintln!("the error: {err}");
    assert!(err.contains("'sensors/bad'"), "{err}");
    assert!(err.contains("readings"), "names the agent: {err}");
    assert!(err.contains("not the JSON expected"), "{err}");
}

/// A payload over `max_payload_bytes` fails the source naming the topic and both sizes, even
/// when the whole packet is within what the client accepts (the payload's bound plus room
/// for the topic: a 60,000-byte payload went through a 1,024-byte bound). The message
/// before it arrives.
#[test]
fn a_payload_over_the_bound_fails_the_source_naming_the_topic() {
    let broker = Mosquitto::start("allow_anonymous true");
    let mut g = Graph::new("payload_bound");
    let source = MqttSource::utf8(broker.broker("bounded").max_payload_bytes(1024), ["big/+"]);
    let stats = source.stats();
    let messages = g.source_mqtt("messages", source);
    let out = g.collect("out", &messages);
    let running = g.start().unwrap();
    wait_for(&broker, "the source's subscription", || stats.subscribed());
    let publisher = TestClient::new(&broker, "big-publisher", None, |_| {});
    publisher
        .client
        .publish("big/small", QoS::AtLeastOnce, false, "x".repeat(1024))
        .unwrap();
    publisher
        .client
        .publish("big/large", QoS::AtLeastOnce, false, "x".repeat(60_000))
        .unwrap();
    let err = running.join().unwrap_err().to_string();
    eprintln!("the error: {err}");
    assert!(err.contains("'big/large'"), "{err}");
    assert!(err.contains("60000 bytes"), "{err}");
    assert!(err.contains("max_payload_bytes (1024)"), "{err}");
    assert_eq!(out.values(), ["x".repeat(1024)]);
}

/// A broker that knows one user, alice, with the password "right".
fn broker_with_password() -> Mosquitto {
    let passwords = tempfile::NamedTempFile::new().unwrap();
    let status = Command::new("mosquitto_passwd")
        .args(["-b", passwords.path().to_str().unwrap(), "alice", "right"])
        .status()
        .expect("mosquitto_passwd (package mosquitto) runs");
    assert!(status.success());
    let (_, path) = passwords.keep().unwrap();
    let broker = Mosquitto::start(&format!(
        "allow_anonymous false\npassword_file {}",
        path.display()
    ));
    std::fs::rename(&path, broker.dir.path().join("passwords")).unwrap();
    broker
}

#[test]
fn a_rejected_user_name_or_password_is_a_clear_error() {
    let broker = broker_with_password();
    // The right password works.
    let mut g = Graph::new("auth_ok");
    let source = MqttSource::utf8(broker.broker("ok").credentials("alice", "right"), ["t"]);
    let stats = source.stats();
    let s = g.source_mqtt("in", source);
    let _ = g.collect("out", &s);
    let running = g.start().unwrap();
    wait_for(&broker, "the subscription with the right password", || {
        stats.subscribed()
    });
    running.stop();
    running.join().unwrap();

    // A wrong one fails the source at once, naming the broker and the user.
    let mut g = Graph::new("auth_bad");
    let source = MqttSource::utf8(broker.broker("bad").credentials("alice", "wrong"), ["t"]);
    let s = g.source_mqtt("in", source);
    let _ = g.collect("out", &s);
    let err = g.run().unwrap_err().to_string();
    eprintln!("the error: {err}");
    let addr = format!("127.0.0.1:{}", broker.port);
    assert!(err.contains(&addr) && err.contains("'alice'"), "{err}");
    assert!(err.contains("refused the connection"), "{err}");

    // So does a sink's.
    let mut g = Graph::new("auth_bad_sink");
    let s = g.source_iter("numbers", 0..3u32);
    let sink = MqttSink::utf8(broker.broker("bad-sink").credentials("alice", "wrong"), "n");
    let stats = g.sink_mqtt("out", &s, sink);
    let err = g.run().unwrap_err().to_string();
    eprintln!("the error: {err}");
    assert!(err.contains("'alice'") && err.contains("refused"), "{err}");
    assert_eq!(stats.delivered(), 0);
}

#[test]
fn a_sink_counts_what_it_cannot_deliver_and_retains_when_asked() {
    let broker = Mosquitto::start("allow_anonymous true");
    let mut g = Graph::new("undeliverable");
    let s = g.source_iter(
        "payloads",
        [b"ok".to_vec(), vec![b'x'; 2048], b"bad-topic".to_vec()],
    );
    let topic = MqttTopic::by(|p: &Vec<u8>| {
        if p.as_slice() == b"bad-topic" {
            "status/#".to_string()
        } else {
            "status/plant".to_string()
        }
    });
    let sink = MqttSink::bytes(broker.broker("status").max_payload_bytes(1024), topic)
        .qos(MqttQos::AtMostOnce)
        .retain(true);
    let stats = g.sink_mqtt("status", &s, sink);
    let metrics = g.run().unwrap();
    // In the agent's metrics (the live view) too.
    assert_eq!(metrics.agent("status").unwrap().undelivered, 2);
    assert_eq!(stats.published(), 1);
    assert_eq!(stats.delivered(), 1);
    assert_eq!(stats.undelivered(), 2, "too large, and not a topic name");
    assert!(stats.last_problem().unwrap().contains("status/#"));

    // Retained: a subscriber that comes later gets it.
    let (tx, rx) = std::sync::mpsc::channel();
    let _late = TestClient::new(&broker, "late", Some("status/plant"), move |p| {
        let _ = tx.send(p.payload.to_vec());
    });
    assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), b"ok");
}

#[test]
fn bad_options_are_reported_when_the_graph_is_built() {
    let mut g = Graph::new("bad_options");
    let s = g.source_mqtt(
        "in",
        MqttSource::utf8(
            MqttBroker::new("127.0.0.1", 1, "").persistent_session(),
            ["a/#/b"],
        ),
    );
    g.sink_mqtt(
        "out",
        &s,
        MqttSink::utf8(MqttBroker::new("127.0.0.1", 1, "x"), "alerts/{unclosed"),
    );
    let err = g.run().unwrap_err().to_string();
    eprintln!("the error: {err}");
    assert!(
        err.contains("persistent session needs a client id"),
        "{err}"
    );
    assert!(
        err.contains("'a/#/b' is not a valid MQTT topic filter"),
        "{err}"
    );
    assert!(err.contains("topic template 'alerts/{unclosed'"), "{err}");
    let _ = std::io::stderr().flush();

    // A scheme in the host, a host with a space, port 0: each would only fail its connection
    // attempts, retried for ever by default.
    let mut g = Graph::new("bad_addresses");
    for (i, (host, port)) in [
        ("mqtt://127.0.0.1", 1883),
        ("broker one", 1883),
        ("127.0.0.1", 0),
    ]
    .into_iter()
    .enumerate()
    {
        let s = g.source_mqtt(
            &format!("in{i}"),
            MqttSource::utf8(MqttBroker::new(host, port, "x"), ["a/#"]),
        );
        let _ = g.collect(&format!("out{i}"), &s);
    }
    let err = g.run().unwrap_err().to_string();
    for says in [
        "host 'mqtt://127.0.0.1' must be a host name or address, without a scheme",
        "host 'broker one' is not a host name or address",
        "port 0 is not a port",
    ] {
        assert!(err.contains(says), "{says}: {err}");
    }
}

/// A sink that gives up on a broker that never answers fails the run naming the broker, and
/// what it had handed to its connection, never acknowledged, is counted undelivered (it stayed
/// 0: the count is made by the drain at the end of the stream, which a failing step skips).
#[test]
fn a_sink_that_gives_up_counts_what_was_never_acknowledged() {
    // A port nothing listens on: bound, then closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut g = Graph::new("gives_up");
    let s = g.source_iter("alerts", (0..1000).map(|i| i.to_string()));
    let broker =
        MqttBroker::new("127.0.0.1", port, "gives-up").give_up_after(Duration::from_millis(500));
    let stats = g.sink_mqtt("publish", &s, MqttSink::utf8(broker, "alerts/x"));
    let err = g.run().expect_err("nobody listens").to_string();
    assert!(err.contains("gave up on MQTT broker 127.0.0.1"), "{err}");
    assert!(stats.published() > 0, "nothing was handed over");
    assert_eq!(stats.delivered(), 0);
    assert_eq!(stats.undelivered(), stats.published(), "{err}");
}

/// TLS (feature `mqtt-tls`): a broker with a certificate from a CA made here; a source and a
/// sink that trust the CA exchange messages, one that trusts another CA fails naming TLS.
#[cfg(feature = "mqtt-tls")]
#[test]
fn tls_connections_work_with_the_right_ca_and_fail_clearly_with_another() {
    use iotstream::ops::mqtt::MqttTls;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        (params, key, pem)
    }
    let files = tempfile::tempdir().unwrap();
    let (ca_params, ca_key, ca_pem) = ca("mqtt test CA");
    let (_, _, other_pem) = ca("another CA");
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = params
        .signed_by(&key, &Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    let write = |name: &str, text: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_file = write("ca.pem", &ca_pem);
    let other_ca = write("other.pem", &other_pem);
    let cert_file = write("server.pem", &cert.pem());
    let key_file = write("server.key", &key.serialize_pem());
    let broker = Mosquitto::start(&format!(
        "allow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}",
        ca_file.display(),
        cert_file.display(),
        key_file.display()
    ));

    let mut g = Graph::new("tls");
    let source = MqttSource::utf8(
        broker.broker("tls-in").tls(MqttTls::new(&ca_file)),
        ["tls/in"],
    );
    let stats = source.stats();
    let s = g.source_mqtt("in", source);
    let upper = g.map("upper", &s, |t: &String| t.to_uppercase());
    let sink = MqttSink::utf8(
        broker.broker("tls-out").tls(MqttTls::new(&ca_file)),
        "tls/out",
    );
    let out_stats = g.sink_mqtt("out", &upper, sink);
    let echo = MqttSource::utf8(
        broker.broker("tls-echo").tls(MqttTls::new(&ca_file)),
        ["tls/out"],
    );
    let echo_stats = echo.stats();
    let echoed = g.source_mqtt("echo", echo);
    let got = g.collect("got", &echoed);
    let running = g.start().unwrap();
    wait_for(&broker, "the TLS subscriptions", || {
        stats.subscribed() && echo_stats.subscribed()
    });
    let publisher = MqttSink::utf8(
        broker.broker("tls-pub").tls(MqttTls::new(&ca_file)),
        "tls/in",
    );
    let mut p = Graph::new("tls_publisher");
    let words = p.source_iter("words", ["hello".to_string()]);
    p.sink_mqtt("pub", &words, publisher);
    p.run().unwrap();
    wait_for(&broker, "the message back over TLS", || !got.is_empty());
    running.stop();
    running.join().unwrap();
    assert_eq!(got.values()[0], "HELLO");
    assert!(out_stats.delivered() >= 1);

    let mut g = Graph::new("tls_wrong_ca");
    let s = g.source_mqtt(
        "in",
        MqttSource::utf8(broker.broker("tls-bad").tls(MqttTls::new(&other_ca)), ["t"]),
    );
    let _ = g.collect("out", &s);
    let err = g.run().unwrap_err().to_string();
    eprintln!("the error: {err}");
    assert!(err.contains("TLS failed"), "{err}");
}

/// QoS 0 messages, which the broker sends without waiting for acknowledgements: a source
/// whose readers are held up keeps at most `queue_bytes` of payload waiting between its
/// connection and its agent (before, only the message bound: 4,096 messages of up to 1 MiB).
#[test]
fn a_held_up_source_keeps_its_queue_to_its_byte_bound() {
    let broker = Mosquitto::start("allow_anonymous true");
    let mut g = Graph::new("queue_bytes");
    // One image in flight on each connection, so the queue is what fills.
    g.set_default_capacity_bytes(256 << 10);
    let source = MqttSource::bytes(broker.broker("camera"), ["camera/jpeg"]).queue_bytes(1 << 20);
    let stats = source.stats();
    let images = g.source_mqtt("images", source);
    let paused = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let held = Arc::clone(&paused);
    let sizes = g.map("size", &images, move |v: &Vec<u8>| {
        while held.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        v.len()
    });
    let out = g.collect("out", &sizes);
    let running = g.start().unwrap();
    wait_for(&broker, "the source's subscription", || stats.subscribed());
    let publisher = TestClient::new(&broker, "camera-publisher", None, |_| {});
    for _ in 0..20 {
        publisher
            .client
            .publish("camera/jpeg", QoS::AtMostOnce, false, vec![7u8; 256 << 10])
            .unwrap();
    }
    wait_for(&broker, "the source's queue to fill", || {
        stats.max_queued_bytes() >= 768 << 10
    });
    // Time for more to come, were there room.
    std::thread::sleep(Duration::from_millis(500));
    paused.store(false, std::sync::atomic::Ordering::SeqCst);
    wait_for(&broker, "every image", || out.len() == 20);
    running.stop();
    running.join().unwrap();
    assert_eq!(out.values(), vec![256 << 10; 20]);
    let most = stats.max_queued_bytes();
    assert!(
        most <= 1 << 20,
        "{most} bytes of payload waited in a queue of 1 MiB"
    );
}
