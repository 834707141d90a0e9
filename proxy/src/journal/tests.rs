//! The journal's tests: sequences, torn records, trimming, the mapped segment.

use super::*;

fn rec(profile: &str) -> UsageRecord {
    UsageRecord {
        profile: profile.into(),
        ..UsageRecord::default()
    }
}

#[test]
fn sequences_survive_reopen_and_torn_tails_are_cut() {
    let dir = tempfile::tempdir().expect("tmp");
    let j = Journal::open(dir.path(), 1 << 20).expect("open");
    let id = j.proxy_id().to_owned();
    assert_eq!(j.append(rec("a")).expect("append"), 1);
    assert_eq!(j.append(rec("b")).expect("append"), 2);
    // A second process (or a second open) on the same journal is refused.
    assert!(matches!(
        Journal::open(dir.path(), 1 << 20),
        Err(JournalError::InUse { .. })
    ));
    drop(j);
    // A torn write: half a record at the end.
    let seg = dir.path().join(segment_name(1));
    let mut f = OpenOptions::new().append(true).open(&seg).expect("seg");
    f.write_all(b"{\"seq\":3,\"ts_").expect("write");
    let j = Journal::open(dir.path(), 1 << 20).expect("reopen");
    assert_eq!(j.proxy_id(), id);
    assert_eq!(j.append(rec("c")).expect("append"), 3);
    let all = j.read_after(0, 100, 1 << 20).expect("read");
    assert_eq!(
        all.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}

#[test]
fn acked_segments_are_trimmed_and_never_reread() {
    let dir = tempfile::tempdir().expect("tmp");
    let j = Journal::open(dir.path(), 200).expect("open");
    for _ in 0..20 {
        j.append(rec("p")).expect("append");
    }
    assert!(segments(dir.path()).expect("segs").len() > 3);
    let first = j.read_after(0, 5, 1 << 20).expect("read");
    assert_eq!(first.len(), 5);
    j.ack(5).expect("ack");
    let rest = j.read_after(j.acked(), 100, 1 << 20).expect("read");
    assert_eq!(rest.first().map(|r| r.0), Some(6));
    assert_eq!(rest.len(), 15);
    // A cursor continues where the previous read stopped, across segments.
    let (a, c) = j.read_from(Cursor::default(), 5, 4, 1 << 20).expect("read");
    let (b, c2) = j.read_from(c, 9, 100, 1 << 20).expect("read");
    assert_eq!(a.iter().map(|r| r.0).collect::<Vec<_>>(), vec![6, 7, 8, 9]);
    assert_eq!(b.first().map(|r| r.0), Some(10));
    assert_eq!(b.last().map(|r| r.0), Some(20));
    assert!(
        j.read_from(c2, 20, 100, 1 << 20)
            .expect("read")
            .0
            .is_empty()
    );
    j.ack(20).expect("ack");
    assert_eq!(segments(dir.path()).expect("segs").len(), 1);
    drop(j);
    let j = Journal::open(dir.path(), 200).expect("reopen");
    assert_eq!(j.append(rec("q")).expect("append"), 21);
    assert!(j.read_after(20, 100, 1 << 20).expect("read").len() == 1);
}

#[test]
fn the_acknowledgement_is_written_down_before_a_trim_and_at_close() {
    let dir = tempfile::tempdir().expect("tmp");
    let j = Journal::open(dir.path(), 1 << 20).expect("open");
    for _ in 0..3 {
        j.append(rec("p")).expect("append");
    }
    // One segment, still being written: nothing is trimmed, so nothing is written down.
    j.ack(2).expect("ack");
    assert_eq!(j.acked(), 2);
    assert_eq!(read_acked(dir.path()).expect("acked"), 0);
    // A clean close writes it down: the reopened journal starts after it.
    drop(j);
    assert_eq!(read_acked(dir.path()).expect("acked"), 2);
    let j = Journal::open(dir.path(), 200).expect("reopen");
    assert_eq!(j.acked(), 2);
    // Small segments now: an acknowledgement that trims is on disk before the trim.
    for _ in 0..6 {
        j.append(rec("p")).expect("append");
    }
    let before = segments(dir.path()).expect("segs").len();
    j.ack(7).expect("ack");
    assert!(segments(dir.path()).expect("segs").len() < before);
    assert_eq!(read_acked(dir.path()).expect("acked"), 7);
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

#[test]
fn a_record_is_in_the_file_when_append_returns_and_a_crash_leaves_nothing_half_read() {
    let dir = tempfile::tempdir().expect("tmp");
    let j = Journal::open(dir.path(), 1 << 20).expect("open");
    j.append(rec("a")).expect("append");
    j.append(rec("b")).expect("append");
    let seg = dir.path().join(segment_name(1));
    // What a `kill -9` now leaves: the file as the page cache holds it.
    let text = std::fs::read(&seg).expect("read");
    let records = text.iter().rposition(|b| *b == b'\n').expect("records") + 1;
    assert_eq!(memchr::memchr_iter(b'\n', &text[..records]).count(), 2);
    assert!(
        text[records..].iter().all(|b| *b == 0),
        "room after the records is zeros"
    );
    // A record half copied when the process died: its start and end are there, its
    // middle is not.
    let crashed = tempfile::tempdir().expect("tmp");
    copy_dir(dir.path(), crashed.path());
    let mut torn = OpenOptions::new()
        .write(true)
        .open(crashed.path().join(segment_name(1)))
        .expect("seg");
    torn.seek(SeekFrom::Start(records as u64)).expect("seek");
    // Longer than the record written over it next.
    let mut half = b"{\"seq\":3,\"ts_ms\":".to_vec();
    half.extend([0u8; 600]);
    half.extend(b"\"xxxxxxxx\"}\n");
    torn.write_all(&half).expect("torn");
    drop(torn);
    let again = Journal::open(crashed.path(), 1 << 20).expect("reopen");
    assert_eq!(again.append(rec("c")).expect("append"), 3);
    // What the torn record left past the new one was zeroed at open.
    let text = std::fs::read(crashed.path().join(segment_name(1))).expect("read");
    let records = text.iter().rposition(|b| *b == b'\n').expect("records") + 1;
    assert_eq!(memchr::memchr_iter(b'\n', &text[..records]).count(), 3);
    assert!(text[records..].iter().all(|b| *b == 0));
    let all = again.read_after(0, 100, 1 << 20).expect("read");
    assert_eq!(
        all.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(
        all.iter()
            .all(|(_, line)| serde_json::from_slice::<serde_json::Value>(line).is_ok()),
        "every record read back is whole JSON"
    );
    // Past the records of the segment being written, a reader reads nothing, even what
    // looks like a record (a copy under way).
    let mut ahead = OpenOptions::new().write(true).open(&seg).expect("seg");
    ahead.seek(SeekFrom::Start(records as u64)).expect("seek");
    ahead
        .write_all(b"{\"seq\":3,\"profile\":\"x\"}\n")
        .expect("ahead");
    drop(ahead);
    assert_eq!(j.read_after(0, 100, 1 << 20).expect("read").len(), 2);
}

#[test]
fn finished_segments_hold_their_records_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tmp");
    let j = Journal::open(dir.path(), 1000).expect("open");
    // Records of ~370 bytes: two to a segment, with room left over.
    for _ in 0..6 {
        j.append(rec("p")).expect("append");
    }
    let segs = segments(dir.path()).expect("segs");
    assert!(segs.len() > 2);
    let whole = |first: &u64| {
        let text = std::fs::read(dir.path().join(segment_name(*first))).expect("read");
        !text.is_empty() && !text.contains(&0) && text.last() == Some(&b'\n')
    };
    // Rolled over: cut to their records.
    assert!(segs[..segs.len() - 1].iter().all(whole));
    // A record larger than a segment gets one of its own size.
    let big = UsageRecord {
        profile: "p".repeat(1000),
        ..UsageRecord::default()
    };
    let seq = j.append(big).expect("append");
    assert_eq!(j.read_after(seq - 1, 10, 1 << 20).expect("read").len(), 1);
    j.append(rec("p")).expect("append");
    // Closed: the last one too.
    drop(j);
    assert!(segments(dir.path()).expect("segs").iter().all(whole));
    // The same for the first record of a fresh journal, whose segment is empty.
    let fresh = tempfile::tempdir().expect("tmp");
    let j = Journal::open(fresh.path(), 1000).expect("open");
    let big = UsageRecord {
        profile: "q".repeat(1000),
        ..UsageRecord::default()
    };
    assert_eq!(j.append(big).expect("append"), 1);
    assert_eq!(j.append(rec("r")).expect("append"), 2);
    assert_eq!(j.read_after(0, 10, 1 << 20).expect("read").len(), 2);
}

#[test]
fn records_across_many_pages_and_segments_read_back_in_order() {
    // Past several of the 64 KiB chunks readied ahead of the writer, and past the end of
    // a segment whose last chunk is short.
    let dir = tempfile::tempdir().expect("tmp");
    let j = Journal::open(dir.path(), 150_000).expect("open");
    for i in 0..1_000u32 {
        j.append(rec(&format!("p{i}"))).expect("append");
    }
    assert!(segments(dir.path()).expect("segs").len() > 1);
    let all = j.read_after(0, 2_000, 16 << 20).expect("read");
    assert_eq!(all.len(), 1_000);
    for (i, (seq, line)) in all.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        let v: serde_json::Value = serde_json::from_slice(line).expect("json");
        assert_eq!(v["profile"], format!("p{i}"));
    }
}

#[test]
fn a_disk_without_room_for_a_segment_fails_appends_not_the_start() {
    // A segment size no disk here can give blocks to stands for a full disk.
    let no_room = 1u64 << 50;
    let dir = tempfile::tempdir().expect("tmp");
    let j = Journal::open(dir.path(), no_room).expect("open without room");
    assert!(j.append(rec("a")).is_err());
    drop(j);
    // A journal with records reopened without room to grow: they stay readable, and a
    // segment that cannot be created leaves no file behind to block the next try.
    let dir = tempfile::tempdir().expect("tmp");
    let j = Journal::open(dir.path(), 1 << 20).expect("open");
    j.append(rec("a")).expect("append");
    j.append(rec("b")).expect("append");
    drop(j);
    let j = Journal::open(dir.path(), no_room).expect("reopen without room");
    assert!(j.append(rec("c")).is_err());
    assert!(j.append(rec("c")).is_err());
    assert_eq!(segments(dir.path()).expect("segs"), vec![1]);
    assert_eq!(j.read_after(0, 10, 1 << 20).expect("read").len(), 2);
}
