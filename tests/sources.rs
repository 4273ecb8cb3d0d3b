//! Sources that talk to the outside world deliver what has arrived without waiting for a full
//! batch, and end cleanly.

use std::io::Write;
use std::time::{Duration, Instant};

use iotstream::Graph;

/// A line written into a FIFO reaches the sink before the next one is written: the line source
/// does not wait for a full batch. Every wait is bounded, so a regression fails, never hangs.
#[test]
fn file_lines_arrive_one_by_one_from_a_fifo() {
    let dir = std::env::temp_dir().join(format!("iotstream-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("sensor.fifo");
    let _ = std::fs::remove_file(&fifo);
    nix::unistd::mkfifo(
        &fifo,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .unwrap();
    let mut g = Graph::new("fifo");
    let lines = g.source_file_lines("sensor", &fifo);
    let out = g.collect("out", &lines);
    let running = g.start().unwrap();
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    for i in 0..5 {
        writeln!(writer, "reading {i}").unwrap();
        writer.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.len() <= i && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(out.len(), i + 1, "line {i} did not arrive on its own");
    }
    drop(writer); // end of file: the source ends, the run drains and ends
    running.join().unwrap();
    assert_eq!(
        out.values(),
        (0..5).map(|i| format!("reading {i}")).collect::<Vec<_>>()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
