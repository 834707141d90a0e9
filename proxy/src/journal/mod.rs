//! The usage journal: every request record is appended to a local file before the proxy
//! forgets it, shipped in batches with (proxy id, sequence) to the control plane, and
//! trimmed only after the control plane acknowledged it. The control plane inserts
//! idempotently on (proxy id, sequence), so a batch sent twice counts once, and a `kill -9`
//! of either side loses nothing: a record is in the file (the page cache survives the
//! process) before the proxy's logging phase returns.
//!
//! Layout of the journal directory: `proxy-id` (this proxy's stable id), `acked` (the
//! highest acknowledged sequence, replaced atomically), and segments `seg-<first seq>.jsonl`,
//! one JSON record per line.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::events::{EventSink, RequestRecord};

mod record;
mod record_json;
mod segment;
pub use record::{Decisions, McpUsage, UsageRecord, session_digest};

/// Journal failures.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// File I/O.
    #[error("usage journal at {path}: {source}")]
    Io {
        /// Which file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// Another process holds the journal.
    #[error(
        "usage journal at {path} is in use by another sluice process; give each running proxy \
         its own --data-dir (during an upgrade, the new process a different one)"
    )]
    InUse {
        /// The journal directory.
        path: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The longest line buffer kept for the next append (a line with captured bodies can be
/// far longer; its buffer is dropped after use).
const LINE_BUFFER_KEPT: usize = 64 * 1024;

struct Writer {
    segment: segment::ActiveSegment,
    next_seq: u64,
    /// The line being written, kept between appends (one allocation, not one per record).
    line: Vec<u8>,
}

/// The journal. Cheap to share.
pub struct Journal {
    dir: PathBuf,
    proxy_id: String,
    // A segment's size: it rolls over before a record that would not fit.
    segment_capacity: usize,
    writer: parking_lot::Mutex<Writer>,
    appended: tokio::sync::Notify,
    failures: std::sync::atomic::AtomicU64,
    // The highest acknowledged sequence; the `acked` file's value is read once at open
    // (this process is its only writer) and trails it between trims (`ack`).
    acked: std::sync::atomic::AtomicU64,
    // What the `acked` file holds.
    persisted_acked: parking_lot::Mutex<u64>,
    // Held for the journal's life: two writers would interleave sequences.
    _lock: File,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .field("proxy_id", &self.proxy_id)
            .finish()
    }
}

fn segment_name(first: u64) -> String {
    format!("seg-{first:020}.jsonl")
}

fn segments(dir: &Path) -> Result<Vec<u64>, JournalError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_prefix("seg-")
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

#[derive(Deserialize)]
struct SeqOnly {
    seq: u64,
}

/// The sequence of one journal line, if it is a whole record. Records are written with
/// `seq` first, so it is read from the prefix; the whole line must still end the object and
/// hold no zero byte (what a segment holds where nothing was written: `segment.rs`).
fn line_seq(line: &[u8]) -> Option<u64> {
    if memchr::memchr(0, line).is_some() {
        return None;
    }
    if let Some(rest) = line.strip_prefix(b"{\"seq\":")
        && line.last() == Some(&b'}')
    {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 0 && rest.get(digits) == Some(&b',') {
            return std::str::from_utf8(&rest[..digits]).ok()?.parse().ok();
        }
    }
    serde_json::from_slice::<SeqOnly>(line).ok().map(|s| s.seq)
}

/// One journal record: its sequence and its JSON line (a slice of its segment's read, which
/// the lines of one read share rather than each being copied out).
pub type Line = (u64, bytes::Bytes);

/// Where a reader stopped: a segment (its first sequence) and a byte offset in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    segment: u64,
    offset: u64,
}

impl Journal {
    /// Opens (or creates) the journal in `dir`. A torn last line (power loss mid-write) is
    /// cut off; sequences continue after the last whole record.
    pub fn open(dir: &Path, segment_max_bytes: u64) -> Result<Arc<Self>, JournalError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(JournalError::InUse {
                    path: dir.display().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let id_path = dir.join("proxy-id");
        let proxy_id = match std::fs::read_to_string(&id_path) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_owned(),
            _ => {
                let mut b = [0u8; 8];
                getrandom::fill(&mut b).map_err(|e| JournalError::Io {
                    path: id_path.display().to_string(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                let id = format!(
                    "px-{}",
                    b.iter().map(|x| format!("{x:02x}")).collect::<String>()
                );
                write_atomic(&id_path, id.as_bytes())?;
                id
            }
        };
        let acked = read_acked(dir)?;
        let segs = segments(dir)?;
        let capacity = usize::try_from(segment_max_bytes).unwrap_or(usize::MAX);
        let (segment, next_seq) = match segs.last() {
            Some(&first) => {
                let path = dir.join(segment_name(first));
                let text = std::fs::read(&path).map_err(io(&path))?;
                let mut good_end = 0usize;
                let mut last = first.saturating_sub(1);
                let mut start = 0usize;
                while let Some(nl) = memchr::memchr(b'\n', &text[start..]) {
                    let line = &text[start..start + nl];
                    match line_seq(line) {
                        Some(s) => {
                            last = s;
                            good_end = start + nl + 1;
                        }
                        None => break,
                    }
                    start += nl + 1;
                }
                let written = segment::written_end(&text);
                if written > good_end {
                    tracing::warn!(path = %path.display(), "usage journal: cut a torn last record");
                }
                let segment =
                    segment::ActiveSegment::resume(&path, first, good_end, written, capacity)
                        .map_err(io(&path))?;
                (segment, last.max(acked) + 1)
            }
            None => {
                let next = acked + 1;
                let path = dir.join(segment_name(next));
                let segment = segment::ActiveSegment::create_or_unmapped(&path, next, capacity)
                    .map_err(io(&path))?;
                (segment, next)
            }
        };
        Ok(Arc::new(Self {
            dir: dir.to_owned(),
            proxy_id,
            segment_capacity: capacity,
            writer: parking_lot::Mutex::new(Writer {
                segment,
                next_seq,
                // Sized for a typical record (about 600 bytes).
                line: Vec::with_capacity(1024),
            }),
            appended: tokio::sync::Notify::new(),
            failures: std::sync::atomic::AtomicU64::new(0),
            acked: std::sync::atomic::AtomicU64::new(acked),
            persisted_acked: parking_lot::Mutex::new(acked),
            _lock: lock,
        }))
    }

    /// This proxy's stable id.
    pub fn proxy_id(&self) -> &str {
        &self.proxy_id
    }

    /// Records that could not be written (disk full, I/O errors).
    pub fn failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Appends one record, giving it the next sequence.
    pub fn append(&self, mut record: UsageRecord) -> Result<u64, JournalError> {
        self.append_with(|seq, line| {
            record.seq = seq;
            record.write_json(line);
        })
    }

    /// Appends a finished request's record, written straight from it (`record_json.rs`).
    pub fn append_request(&self, record: &RequestRecord) -> Result<u64, JournalError> {
        let ts_ms = record::now_ms();
        self.append_with(|seq, line| record_json::Line::of_request(record, seq, ts_ms).write(line))
    }

    /// Appends the line `write` writes for the next sequence (under the writer's lock, so
    /// lines are in sequence order).
    fn append_with(&self, write: impl FnOnce(u64, &mut Vec<u8>)) -> Result<u64, JournalError> {
        let mut guard = self.writer.lock();
        let w = &mut *guard;
        let seq = w.next_seq;
        let mut line = std::mem::take(&mut w.line);
        line.clear();
        write(seq, &mut line);
        line.push(b'\n');
        let pushed = self.push_line(w, seq, &line);
        if line.capacity() <= LINE_BUFFER_KEPT {
            // A captured body can make a line of megabytes; that buffer is not kept.
            w.line = line;
        }
        pushed?;
        w.next_seq += 1;
        drop(guard);
        self.appended.notify_one();
        Ok(seq)
    }

    /// Writes `line` (record `seq`) into the active segment, rolling over when it does not fit.
    fn push_line(&self, w: &mut Writer, seq: u64, line: &[u8]) -> Result<(), JournalError> {
        if line.len() > w.segment.room() {
            if w.segment.len > 0 {
                let path = self.dir.join(segment_name(seq));
                let capacity = self.segment_capacity.max(line.len());
                let next =
                    segment::ActiveSegment::create(&path, seq, capacity).map_err(io(&path))?;
                let mut done = std::mem::replace(&mut w.segment, next);
                if let Err(e) = done.finish() {
                    // Its records are whole; the zeros after them stay, which readers skip.
                    tracing::warn!(error = %e, "usage journal: could not cut a finished segment");
                }
            } else {
                // A record larger than a whole segment gets a segment of its own size; a
                // segment left without room by a full disk tries again.
                let path = self.dir.join(segment_name(w.segment.first));
                w.segment
                    .grow_to(self.segment_capacity.max(line.len()))
                    .map_err(io(&path))?;
            }
        }
        // One copy into the mapping: in the page cache once it returns (`segment.rs`).
        if !w.segment.push(line) {
            return Err(JournalError::Io {
                path: self
                    .dir
                    .join(segment_name(w.segment.first))
                    .display()
                    .to_string(),
                source: std::io::Error::other("no room for the record in its segment"),
            });
        }
        Ok(())
    }

    /// The last sequence written (0 before the first record).
    pub fn last_seq(&self) -> u64 {
        self.writer.lock().next_seq.saturating_sub(1)
    }

    /// The highest acknowledged sequence.
    pub fn acked(&self) -> u64 {
        self.acked.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Reads whole records after `after`, up to `max_records` / about `max_bytes`, from the
    /// start of the journal.
    pub fn read_after(
        &self,
        after: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Line>, JournalError> {
        Ok(self
            .read_from(Cursor::default(), after, max_records, max_bytes)?
            .0)
    }

    /// Reads whole records after `after` starting at `cursor` (where the previous read
    /// stopped), so a shipper reads each byte once; returns where this read stopped.
    pub fn read_from(
        &self,
        cursor: Cursor,
        after: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Line>, Cursor), JournalError> {
        let segs = segments(&self.dir)?;
        // The segment being written is read only up to its whole records: a record being
        // copied into it may be half there.
        let (active, active_len) = {
            let w = self.writer.lock();
            (w.segment.first, w.segment.len as u64)
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut at = cursor;
        for (i, first) in segs.iter().enumerate() {
            if *first < at.segment {
                continue;
            }
            if *first > at.segment {
                at = Cursor {
                    segment: *first,
                    offset: 0,
                };
            }
            if let Some(next) = segs.get(i + 1)
                && *next <= after + 1
            {
                continue;
            }
            let path = self.dir.join(segment_name(*first));
            let mut f = File::open(&path).map_err(io(&path))?;
            f.seek(SeekFrom::Start(at.offset)).map_err(io(&path))?;
            // Sized up front: the read fills it without growing it step by step.
            let mut text;
            if *first == active {
                let left = active_len.saturating_sub(at.offset);
                text = Vec::with_capacity(usize::try_from(left).unwrap_or(0));
                f.take(left).read_to_end(&mut text).map_err(io(&path))?;
            } else {
                let left = f
                    .metadata()
                    .map_or(0, |m| m.len().saturating_sub(at.offset));
                text = Vec::with_capacity(usize::try_from(left).unwrap_or(0));
                f.read_to_end(&mut text).map_err(io(&path))?;
            }
            let text = bytes::Bytes::from(text);
            let mut start = 0usize;
            while let Some(nl) = memchr::memchr(b'\n', &text[start..]) {
                let (line_start, line_end) = (start, start + nl);
                let Some(seq) = line_seq(&text[line_start..line_end]) else {
                    break;
                };
                start += nl + 1;
                at.offset += (nl + 1) as u64;
                if seq <= after {
                    continue;
                }
                bytes += nl;
                out.push((seq, text.slice(line_start..line_end)));
                if out.len() >= max_records || bytes >= max_bytes {
                    return Ok((out, at));
                }
            }
        }
        Ok((out, at))
    }

    /// Records `seq` as acknowledged and removes segments wholly at or below it.
    ///
    /// The `acked` file is rewritten (and synced) only before segments go, not on every
    /// acknowledgement: it is what keeps a restarted proxy from reusing a removed segment's
    /// sequences. Sequences still in a file after a restart are read again from the last
    /// written value and sent again; the control plane stores each (proxy id, sequence) once,
    /// so that costs a round trip and counts nothing twice.
    pub fn ack(&self, seq: u64) -> Result<(), JournalError> {
        if seq <= self.acked() {
            return Ok(());
        }
        let segs = segments(&self.dir)?;
        // The last segment is the one being written: never removed.
        let wholly_acked = segs
            .windows(2)
            .take_while(|pair| pair[1] <= seq + 1)
            .map(|pair| pair[0])
            .collect::<Vec<_>>();
        if !wholly_acked.is_empty() {
            self.persist_acked(seq)?;
        }
        self.acked
            .fetch_max(seq, std::sync::atomic::Ordering::AcqRel);
        for first in wholly_acked {
            let path = self.dir.join(segment_name(first));
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
        Ok(())
    }

    /// Writes `seq` to the `acked` file unless it holds that much already.
    fn persist_acked(&self, seq: u64) -> Result<(), JournalError> {
        let mut persisted = self.persisted_acked.lock();
        if *persisted < seq {
            write_atomic(&self.dir.join("acked"), seq.to_string().as_bytes())?;
            *persisted = seq;
        }
        Ok(())
    }

    /// Waits until a record is appended (or returns at once if one was since the last wait).
    pub async fn appended(&self) {
        self.appended.notified().await;
    }
}

impl Drop for Journal {
    // A proxy that stops cleanly leaves nothing to send again at its next start, and its
    // last segment as plain JSON lines.
    fn drop(&mut self) {
        if let Err(e) = self.persist_acked(self.acked()) {
            tracing::warn!(error = %e, "usage journal: could not record the last acknowledgement");
        }
        if let Err(e) = self.writer.get_mut().segment.finish() {
            tracing::warn!(error = %e, "usage journal: could not cut the last segment");
        }
    }
}

fn read_acked(dir: &Path) -> Result<u64, JournalError> {
    let path = dir.join("acked");
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(s.trim().parse().unwrap_or(0)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io(&path)(e)),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), JournalError> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))
}

impl EventSink for Journal {
    fn record_mcp(&self, record: &crate::events::McpRecord) {
        self.append_logged(UsageRecord::from_mcp(record));
    }

    fn record(&self, record: &Arc<RequestRecord>) {
        self.log_failure(self.append_request(record));
    }
}

impl Journal {
    fn append_logged(&self, record: UsageRecord) {
        self.log_failure(self.append(record));
    }

    fn log_failure(&self, appended: Result<u64, JournalError>) {
        if let Err(e) = appended {
            let n = self
                .failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Logged for the first failure and then every thousandth, not per request.
            if n.is_multiple_of(1000) {
                tracing::error!(error = %e, failures = n + 1, "usage journal write failed");
            }
        }
    }
}

/// Sends records to several sinks (the journal and the admin API's recent list).
pub struct Tee(pub Vec<Arc<dyn EventSink>>);

impl EventSink for Tee {
    fn record(&self, record: &Arc<RequestRecord>) {
        for s in &self.0 {
            s.record(record);
        }
    }

    fn record_mcp(&self, record: &crate::events::McpRecord) {
        for s in &self.0 {
            s.record_mcp(record);
        }
    }
}

#[cfg(test)]
mod tests;
