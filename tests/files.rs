//! Files as connectors: following a growing file through rotation and truncation
//! (`source_file_follow`), appending sinks (`to_file`, `to_json_lines`). Real files in
//! temporary folders; every wait polls for the expected state with a generous deadline and
//! fails naming what it waited for.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use iotstream::{
    Collected, FileMode, FollowOptions, FollowStart, Graph, InvalidUtf8, LongLines, Running,
};

const DEADLINE: Duration = Duration::from_secs(60);

/// Waits until `out` holds at least `n` elements; fails naming `what` and what arrived.
fn wait_for(out: &Collected<String>, n: usize, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    while out.len() < n {
        if Instant::now() > deadline {
            let got = out.values();
            let tail: Vec<_> = got.iter().rev().take(5).rev().collect();
            panic!(
                "{what}: {} of {n} lines after {DEADLINE:?}; the last ones: {tail:?}",
                got.len()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until `path` exists (a follower writes its offset file once it has opened its file).
fn wait_for_file(path: &Path, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{what}: no {} after {DEADLINE:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn stop(running: Running) {
    running.stop();
    running.join().expect("the run ends cleanly after a stop");
}

fn fast() -> FollowOptions {
    FollowOptions::default().poll_interval(Duration::from_millis(5))
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// Line `i` of a writer: numbered, of varying length, so that no two lines are alike.
fn line(i: usize) -> String {
    format!("line {i} {}", "x".repeat(i % 37))
}

/// Starting at the end emits only what is appended after the start (an unfinished last line
/// whole, once finished); starting at the beginning emits the file's lines first.
#[test]
fn follow_starts_at_the_end_or_at_the_beginning() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(&log, "old 1\nold 2\nunfin").unwrap();
    let ready = dir.path().join("end.offset");
    let mut g = Graph::new("starts");
    let end = g.source_file_follow_with("end", &log, fast().offset_file(&ready));
    let begin_ready = dir.path().join("begin.offset");
    let begin = g.source_file_follow_with(
        "begin",
        &log,
        fast()
            .start(FollowStart::Beginning)
            .offset_file(&begin_ready),
    );
    let end_out = g.collect("end_out", &end);
    let begin_out = g.collect("begin_out", &begin);
    let running = g.start().unwrap();
    // Both have opened the file (each wrote its offset file) before anything is appended.
    wait_for_file(&ready, "the follower from the end");
    wait_for_file(&begin_ready, "the follower from the beginning");
    append(&log, "ished\nnew 1\n");
    append(&log, "new 2\n");
    wait_for(&end_out, 3, "from the end");
    wait_for(&begin_out, 5, "from the beginning");
    stop(running);
    assert_eq!(end_out.values(), ["unfinished", "new 1", "new 2"]);
    assert_eq!(
        begin_out.values(),
        ["old 1", "old 2", "unfinished", "new 1", "new 2"]
    );
}

/// From the end, an unfinished last line longer than one read (64 KiB) is read whole once
/// finished too (it was skipped without a word: only the last 64 KiB were searched for its
/// start); one already longer than `max_line_bytes` is what an over-long line is: an error
/// naming the file, or skipped.
#[test]
fn follow_from_the_end_reads_a_long_unfinished_last_line_whole() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let partial = "x".repeat(70_000);
    std::fs::write(
        &log,
        format!(
            "old
{partial}"
        ),
    )
    .unwrap();
    let ready = dir.path().join("end.offset");
    let mut g = Graph::new("long_unfinished");
    let lines = g.source_file_follow_with("log", &log, fast().offset_file(&ready));
    let out = g.collect("out", &lines);
    let running = g.start().unwrap();
    wait_for_file(&ready, "the follower from the end");
    append(&log, "END\nnext\n");
    wait_for(&out, 2, "the finished line and the next");
    stop(running);
    assert_eq!(out.values(), [format!("{partial}END"), "next".to_string()]);

    // Already past the limit at the start.
    std::fs::write(&log, format!("old\n{partial}")).unwrap();
    let mut g = Graph::new("too_long_unfinished");
    let lines = g.source_file_follow_with("log", &log, fast().max_line_bytes(1_000));
    g.collect("out", &lines);
    let msg = g.run().expect_err("over the limit").to_string();
    assert!(msg.contains(&log.display().to_string()), "{msg}");
    assert!(msg.contains("unfinished last line"), "{msg}");
    assert!(msg.contains("longer than 1000 bytes"), "{msg}");

    let content = format!("old\n{partial}");
    std::fs::write(&log, &content).unwrap();
    let mut g = Graph::new("too_long_skipped");
    let options = fast().max_line_bytes(1_000).long_lines(LongLines::Skip);
    let lines = g.source_file_follow_with("log", &log, options);
    let out = g.collect("out", &lines);
    let running = g.start().unwrap();
    // No offset file while the line in progress is skipped: the follower has decided once
    // its open file stands at the end.
    wait_for_position(&log, content.len() as u64);
    append(&log, "END\nnext\n");
    wait_for(&out, 1, "the line after the skipped one");
    stop(running);
    assert_eq!(out.values(), ["next"]);
}

/// A stop ends a follower that waits for its next poll, however long its poll interval: its
/// thread returns. (It slept the whole interval: the stop's grace abandoned the source with
/// a warning, and its thread slept on, here for an hour.)
#[test]
fn a_stop_ends_a_follower_between_polls() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(&log, "old\n").unwrap();
    let mut g = Graph::new("slow_poll");
    let options = FollowOptions::default()
        .start(FollowStart::Beginning)
        .poll_interval(Duration::from_secs(3_600));
    // Its thread is "source slowpoll" (a thread's name is at most 15 bytes).
    let lines = g.source_file_follow_with("slowpoll", &log, options);
    let out = g.collect("out", &lines);
    let running = g.start().unwrap();
    wait_for(&out, 1, "the line already there");
    assert_eq!(threads_named("source slowpoll"), 1);
    running.stop();
    running.join().expect("a clean stop");
    let deadline = Instant::now() + Duration::from_secs(60);
    while threads_named("source slowpoll") > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        threads_named("source slowpoll"),
        0,
        "the follower's thread still waits for its next poll"
    );
    assert_eq!(out.values(), ["old"]);
}

/// Waits until this process has `path` open at byte `pos`.
fn wait_for_position(path: &Path, pos: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let at_pos = || {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|p| p == path)
                    && std::fs::read_to_string(Path::new("/proc/self/fdinfo").join(fd.file_name()))
                        .is_ok_and(|info| info.lines().any(|l| l == format!("pos:\t{pos}")))
            })
    };
    while !at_pos() {
        if Instant::now() > deadline {
            panic!("{} not open at byte {pos} after 60 s", path.display());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// How many threads of this process have the name `name`.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .count()
}

/// Rename rotation while a writer keeps appending: every line exactly once, in order, the
/// unfinished last line of each rotated file included, lines written in pieces whole.
#[test]
fn follow_survives_rename_rotation_losing_and_repeating_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(&log, "").unwrap();
    let mut g = Graph::new("rotation");
    let lines = g.source_file_follow_with("log", &log, fast().start(FollowStart::Beginning));
    let out = g.collect("out", &lines);
    let running = g.start().unwrap();

    let mut want = Vec::new();
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    let mut i = 0;
    let mut before_last_rotation = 0;
    for round in 0..6 {
        for _ in 0..700 {
            let l = line(i);
            // Some lines in two writes: the follower may see half a line.
            if i % 5 == 0 {
                let (a, b) = l.split_at(l.len() / 2);
                file.write_all(a.as_bytes()).unwrap();
                file.write_all(format!("{b}\n").as_bytes()).unwrap();
            } else {
                file.write_all(format!("{l}\n").as_bytes()).unwrap();
            }
            want.push(l);
            i += 1;
        }
        // A last line without its newline: emitted when the file is rotated away.
        let unfinished = format!("round {round} unfinished");
        file.write_all(unfinished.as_bytes()).unwrap();
        want.push(unfinished);
        // Never two rotations before the follower has left the older file (a follower
        // cannot know where a file renamed twice went: tail -F cannot either).
        wait_for(
            &out,
            before_last_rotation + 1,
            "the follower reading the current file",
        );
        std::fs::rename(&log, dir.path().join(format!("app.log.{round}"))).unwrap();
        before_last_rotation = want.len();
        file = std::fs::File::create(&log).unwrap();
        // The writer goes on at once in the new file.
        for _ in 0..50 {
            let l = line(i);
            file.write_all(format!("{l}\n").as_bytes()).unwrap();
            want.push(l);
            i += 1;
        }
    }
    wait_for(&out, want.len(), "every line written");
    stop(running);
    let got = out.values();
    assert_eq!(got.len(), want.len(), "lines lost or repeated");
    assert!(got == want, "the lines differ from what was written");
}

/// copytruncate while a writer keeps appending: the follower notices the truncation (also
/// when the file was written past its old position before it looked) and reads the new
/// content from its start: every line once, in order.
#[test]
fn follow_survives_copytruncate_losing_and_repeating_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(&log, "").unwrap();
    let mut g = Graph::new("copytruncate");
    let lines = g.source_file_follow_with("log", &log, fast().start(FollowStart::Beginning));
    let out = g.collect("out", &lines);
    let running = g.start().unwrap();

    // As a logger does: appending, so that its writes land at the end after a truncation.
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    let mut want = Vec::new();
    let mut i = 0;
    for round in 0..6 {
        // More each round: after the truncation the file soon grows past the old position.
        for _ in 0..(300 + round * 200) {
            let l = line(i);
            file.write_all(format!("{l}\n").as_bytes()).unwrap();
            want.push(l);
            i += 1;
        }
        // copytruncate loses, for every reader, what was written after the reader's last
        // read: rotate only once the follower has read everything.
        wait_for(&out, want.len(), "the follower before copytruncate");
        std::fs::copy(&log, dir.path().join(format!("app.log.{round}"))).unwrap();
        file.set_len(0).unwrap();
    }
    for _ in 0..100 {
        let l = line(i);
        file.write_all(format!("{l}\n").as_bytes()).unwrap();
        want.push(l);
        i += 1;
    }
    wait_for(&out, want.len(), "every line written");
    stop(running);
    let got = out.values();
    assert_eq!(got.len(), want.len(), "lines lost or repeated");
    assert!(got == want, "the lines differ from what was written");
}

/// Waits until the offset file names `log` (its device and inode): the follower has opened it.
fn wait_for_offset_of(offset: &Path, log: &Path) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(log).unwrap();
    let want = format!("{} {} ", meta.dev(), meta.ino());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(offset).is_ok_and(|s| s.starts_with(&want)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the follower never recorded {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn follow_run(log: &Path, offset: &Path, n: usize, what: &str) -> Vec<String> {
    let mut g = Graph::new("resume");
    let options = fast().start(FollowStart::Beginning).offset_file(offset);
    let lines = g.source_file_follow_with("log", log, options);
    let out = g.collect("out", &lines);
    let running = g.start().unwrap();
    wait_for(&out, n, what);
    stop(running);
    out.values()
}

/// With an offset file, a second run resumes where the first stopped: nothing lost, nothing
/// repeated. A file replaced meanwhile (another inode) is read per the start option.
#[test]
fn follow_resumes_from_its_offset_file_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let offset = dir.path().join("app.log.offset");
    let text: String = (0..10).map(|i| format!("{}\n", line(i))).collect();
    std::fs::write(&log, text).unwrap();

    let first = follow_run(&log, &offset, 10, "the first run");
    assert_eq!(first, (0..10).map(line).collect::<Vec<_>>());
    // Device, inode, the offset of the end of the last line handed over, and the bytes just
    // before it (hex).
    let saved = std::fs::read_to_string(&offset).unwrap();
    let len = std::fs::metadata(&log).unwrap().len();
    let fields: Vec<&str> = saved.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "{saved}");
    assert_eq!(fields[2], len.to_string(), "{saved}");
    assert!(fields[3].ends_with(&format!("{:02x}", b'\n')), "{saved}");

    // Written while nothing follows the file.
    let more: String = (10..25).map(|i| format!("{}\n", line(i))).collect();
    append(&log, &more);
    let second = follow_run(&log, &offset, 15, "the second run");
    assert_eq!(second, (10..25).map(line).collect::<Vec<_>>());

    // Written to, then rotated while nothing follows: the rest of the renamed file is read
    // first, then the new one from its beginning (before, the rest of the old file was lost:
    // found by a user's audit).
    append(&log, "late 1\nlate 2\n");
    std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    std::fs::write(&log, "fresh 1\nfresh 2\n").unwrap();
    let third = follow_run(&log, &offset, 4, "the third run");
    assert_eq!(third, ["late 1", "late 2", "fresh 1", "fresh 2"]);

    // Rotated again and the old file gone (compressed at once, say): the new file, all of it
    // written since, is read from its beginning, even by a follower that starts at the end.
    std::fs::rename(&log, dir.path().join("app.log.2")).unwrap();
    std::fs::remove_file(dir.path().join("app.log.2")).unwrap();
    std::fs::write(&log, "newer 1\nnewer 2\n").unwrap();
    let mut g = Graph::new("resume_at_end");
    let lines = g.source_file_follow_with("log", &log, fast().offset_file(&offset));
    let out = g.collect("out", &lines);
    let running = g.start().unwrap();
    wait_for(&out, 2, "the run after the old file went");
    stop(running);
    assert_eq!(out.values(), ["newer 1", "newer 2"]);
    // The offset file pointed at another path, whose file was made before the offset file was
    // last written (an earlier deployment's offset file, say): not a rotation; the follower
    // starts as its start option says, without replaying the file, and does not take a file
    // of another name for the one the offset file names (a reviewer's finding).
    let other = dir.path().join("other.log");
    std::fs::write(&other, "history 1\nhistory 2\n").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let before_other = std::fs::read_to_string(&offset).unwrap();
    std::fs::write(&offset, before_other).unwrap();
    let mut g = Graph::new("another_path");
    let lines = g.source_file_follow_with("log", &other, fast().offset_file(&offset));
    let out = g.collect("out", &lines);
    let running = g.start().unwrap();
    wait_for_offset_of(&offset, &other);
    append(&other, "live 1\n");
    wait_for(&out, 1, "the line appended to the other file");
    stop(running);
    if std::fs::metadata(&other).unwrap().created().is_ok() {
        assert_eq!(out.values(), ["live 1"]);
    } else {
        // A file system that does not say when a file was made: read as a new file.
        assert_eq!(out.values(), ["history 1", "history 2", "live 1"]);
    }
    std::fs::write(&log, "fresh 1\nfresh 2\n").unwrap();
    std::fs::remove_file(&offset).unwrap();

    // An empty offset file (a power cut after the rename) counts as none.
    std::fs::write(&offset, "").unwrap();
    let fourth = follow_run(&log, &offset, 2, "a run with an empty offset file");
    assert_eq!(fourth, ["fresh 1", "fresh 2"]);

    // A corrupt offset file is an error naming it.
    std::fs::write(&offset, "not an offset\n").unwrap();
    let mut g = Graph::new("corrupt_offset");
    let options = fast().offset_file(&offset);
    let lines = g.source_file_follow_with("log", &log, options);
    g.collect("out", &lines);
    let err = g.run().expect_err("a corrupt offset file fails the source");
    let msg = err.to_string();
    assert!(msg.contains(&offset.display().to_string()), "{msg}");
    assert_eq!(err.agent(), Some("log"), "{msg}");
}

/// A copytruncate while nothing follows the file, written again past the saved offset before
/// the next run: the same inode, long enough, but not the bytes the offset was taken in. The
/// next run reads it from its beginning (as a running follower does when it sees a
/// truncation), not from the stale offset, which lost the new file's first lines and handed
/// over the tail of one of them as a line.
#[test]
fn follow_reads_from_the_start_a_file_truncated_and_rewritten_while_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let offset = dir.path().join("app.log.offset");
    let text: String = (0..5).map(|i| format!("old {i}\n")).collect();
    std::fs::write(&log, text).unwrap();
    let first = follow_run(&log, &offset, 5, "the first run");
    assert_eq!(first.len(), 5);

    // copytruncate: the same inode, emptied, then written again beyond the old offset.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    let fresh: Vec<String> = (0..8).map(|i| format!("new line number {i}")).collect();
    append(
        &log,
        &fresh.iter().map(|l| format!("{l}\n")).collect::<String>(),
    );
    let second = follow_run(&log, &offset, 8, "the run after the truncation");
    assert_eq!(second, fresh);

    // Unchanged before the offset (only appended to): the run after resumes there.
    append(&log, "appended\n");
    let third = follow_run(&log, &offset, 1, "the run after an append");
    assert_eq!(third, ["appended"]);

    // An offset file of the earlier form (no bytes recorded) still resumes at its offset.
    let saved = std::fs::read_to_string(&offset).unwrap();
    let old_form: Vec<&str> = saved.split_whitespace().take(3).collect();
    std::fs::write(&offset, format!("{}\n", old_form.join(" "))).unwrap();
    append(&log, "appended again\n");
    let fourth = follow_run(&log, &offset, 1, "the run with an old offset file");
    assert_eq!(fourth, ["appended again"]);
}

/// A line longer than the limit is an error naming the file and the line's byte offset, or is
/// skipped as asked; a line that is not UTF-8 likewise, or is decoded lossily.
#[test]
fn follow_bounds_lines_and_names_the_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let long = "L".repeat(500);
    std::fs::write(&log, format!("ok 1\nok 2\n{long}\nafter\n")).unwrap();
    let options = || fast().start(FollowStart::Beginning).max_line_bytes(100);

    let mut g = Graph::new("long_fails");
    let lines = g.source_file_follow_with("log", &log, options());
    g.collect("out", &lines);
    let err = g.run().expect_err("an over-long line fails the source");
    let msg = err.to_string();
    assert!(msg.contains(&log.display().to_string()), "{msg}");
    assert!(msg.contains("byte offset 10"), "{msg}");
    assert!(msg.contains("longer than 100 bytes"), "{msg}");

    let mut g = Graph::new("long_skipped");
    let lines = g.source_file_follow_with("log", &log, options().long_lines(LongLines::Skip));
    let out = g.collect("out", &lines);
    let running = g.start().unwrap();
    wait_for(&out, 3, "the lines around the long one");
    append(&log, "last\n");
    wait_for(&out, 4, "a line after the long one");
    // A long line still being written: skipped once past the limit, up to its newline.
    append(&log, &"M".repeat(300));
    append(&log, &"M".repeat(300));
    append(&log, "\nend\n");
    wait_for(&out, 5, "a line after a long one written in pieces");
    stop(running);
    assert_eq!(out.values(), ["ok 1", "ok 2", "after", "last", "end"]);

    let bad = dir.path().join("bad.log");
    std::fs::write(&bad, b"fine\nbad \xff byte\nfine again\n").unwrap();
    let mut g = Graph::new("utf8_fails");
    let lines = g.source_file_follow_with("log", &bad, options());
    g.collect("out", &lines);
    let msg = g.run().expect_err("invalid UTF-8 fails").to_string();
    assert!(msg.contains(&bad.display().to_string()), "{msg}");
    assert!(
        msg.contains("byte offset 5") && msg.contains("UTF-8"),
        "{msg}"
    );

    let mut g = Graph::new("utf8_lossy");
    let lines = g.source_file_follow_with("log", &bad, options().invalid_utf8(InvalidUtf8::Lossy));
    let out = g.collect("out", &lines);
    let running = g.start().unwrap();
    wait_for(&out, 3, "lossy lines");
    stop(running);
    assert_eq!(out.values(), ["fine", "bad \u{fffd} byte", "fine again"]);
}

/// Bad options are build errors naming the source.
#[test]
fn follow_rejects_bad_options() {
    let mut g = Graph::new("bad_options");
    let lines = g.source_file_follow_with(
        "log",
        "/nonexistent",
        FollowOptions::default()
            .max_line_bytes(0)
            .poll_interval(Duration::ZERO),
    );
    g.collect("out", &lines);
    let msg = g.run().expect_err("bad options").to_string();
    assert!(
        msg.contains("source_file_follow 'log': max_line_bytes"),
        "{msg}"
    );
    assert!(msg.contains("poll_interval"), "{msg}");
}

fn save_run(path: &PathBuf, values: Vec<u32>, mode: Option<FileMode>) {
    let mut g = Graph::new("save");
    let s = g.source_iter("numbers", values);
    match mode {
        None => g.to_file("save", &s, path),
        Some(mode) => g.to_file_with_mode("save", &s, path, mode, |v: &u32| *v),
    }
    g.run().unwrap();
}

/// `to_file` appends: a second run keeps the first run's lines (and an empty run keeps them
/// too); a last line left without its newline gets one; `Truncate` starts afresh.
#[test]
fn to_file_appends_across_runs_unless_asked_to_truncate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerts.log");
    save_run(&path, vec![1, 2], None);
    save_run(&path, vec![3], None);
    save_run(&path, vec![], None);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n2\n3\n");
    // A writer killed mid-line left this.
    append(&path, "half a li");
    save_run(&path, vec![4], Some(FileMode::Append));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "1\n2\n3\nhalf a li\n4\n"
    );
    save_run(&path, vec![5, 6], Some(FileMode::Truncate));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "5\n6\n");
    save_run(&path, vec![], Some(FileMode::Truncate));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Alert {
    sensor: String,
    level: f64,
    tags: Vec<String>,
    at: Option<u64>,
}

fn alerts(from: usize, n: usize) -> Vec<Alert> {
    (from..from + n)
        .map(|i| Alert {
            sensor: format!("pump \"{i}\"\n\u{e9}"),
            level: i as f64 / 4.0,
            tags: (0..i % 3).map(|t| format!("t{t}")).collect(),
            at: (i % 2 == 0).then_some(i as u64 * 1000),
        })
        .collect()
}

/// `to_json_lines` writes one JSON object per line, appending across runs; serde_json reads
/// back exactly what was sent.
#[test]
fn json_lines_round_trip_and_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerts.jsonl");
    for (from, n) in [(0, 5000), (5000, 3)] {
        let mut g = Graph::new("json");
        let s = g.source_iter("alerts", alerts(from, n));
        g.to_json_lines("save", &s, &path);
        g.run().unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let back: Vec<Alert> = text
        .lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {}: {e}", i + 1)))
        .collect();
    assert_eq!(back, alerts(0, 5003));

    // Truncate: only this run's lines.
    let mut g = Graph::new("json_truncate");
    let s = g.source_iter("alerts", alerts(7, 1));
    g.to_json_lines_with_mode("save", &s, &path, FileMode::Truncate);
    g.run().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert_eq!(
        serde_json::from_str::<Alert>(text.trim_end()).unwrap(),
        alerts(7, 1)[0]
    );
}

/// An element JSON cannot represent (a map with keys that are not strings) is an error naming
/// the file and the line; the lines before it are in the file, and no half line.
#[test]
fn json_lines_reports_what_it_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("maps.jsonl");
    let good: BTreeMap<String, u32> = [("a".to_string(), 1)].into();
    let bad: BTreeMap<(u32, u32), u32> = [((1, 2), 3)].into();
    let mut g = Graph::new("json_bad");
    let s = g.source_iter("pairs", [(good.clone(), None), (good, Some(bad))]);
    g.to_json_lines("save", &s, &path);
    let err = g.run().expect_err("a tuple key cannot be JSON");
    let msg = err.to_string();
    assert_eq!(err.agent(), Some("save"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "[{\"a\":1},null]\n"
    );
}
