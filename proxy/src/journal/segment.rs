//! The segment being written, through a shared memory mapping.
//!
//! A record copied into a `MAP_SHARED` mapping is in the page cache the moment the copy
//! ends, exactly as one `write` call would leave it: a `kill -9` of the proxy loses nothing
//! (the kernel owns the pages). The copy costs no system call; a `write` per record was
//! ~1.8 µs of an ext4 round on the request path (docs/benchmarks.md).
//!
//! The file is allocated to the segment's capacity before it is mapped (`fallocate`, or
//! zeros written where the filesystem cannot), so storing into the mapping never needs a
//! block the disk might not have: a full disk fails the segment's creation, which the caller
//! counts as a failed append, not a `SIGBUS` later. Bytes after the last record are zeros;
//! JSON text never holds a zero byte, so a reader (and the recovery at open) stops at the
//! first one. A segment is cut to its records' length when it is finished (rolled over or
//! the journal closed), so finished segments are plain JSON lines.
//!
//! The first store into each page of the mapping would be a page fault (~1.4% of a loaded
//! proxy's CPU, one per ~7 records); the writer readies the next 64 KiB of pages in one
//! `madvise(MADV_POPULATE_WRITE)` as it enters a chunk instead.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use memmap2::{MmapMut, MmapOptions};

/// Bytes of a segment readied for writing at a time (`ActiveSegment::push`).
const PREFAULT_CHUNK: usize = 64 << 10;

/// The segment records are appended to.
pub(super) struct ActiveSegment {
    /// Its first sequence (its name).
    pub(super) first: u64,
    file: File,
    // `None` only while the file is resized or once it is finished.
    map: Option<MmapMut>,
    /// Bytes of whole records from the start.
    pub(super) len: usize,
}

impl ActiveSegment {
    /// Creates the segment file at `path` with room for `capacity` bytes. A file that
    /// cannot get its blocks (a full disk) is removed again, so a later try can take the
    /// same name.
    pub(super) fn create(path: &Path, first: u64, capacity: usize) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(path)?;
        let mut segment = Self::unmapped(file, first, 0);
        if let Err(e) = segment.map_to(capacity) {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Ok(segment)
    }

    /// Creates the segment file at `path` and maps it if its blocks can be had; if not (a
    /// full disk when the proxy starts), it is kept unmapped: it has no room, and each
    /// record tries again (`grow_to`), failing as a counted append until there is space.
    pub(super) fn create_or_unmapped(
        path: &Path,
        first: u64,
        capacity: usize,
    ) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        let mut segment = Self::unmapped(file, first, 0);
        if let Err(e) = segment.map_to(capacity) {
            tracing::warn!(error = %e, "usage journal: no room for a segment yet");
        }
        Ok(segment)
    }

    /// Continues the existing segment at `path`, whose whole records end at `len`; whatever
    /// follows them up to `written` (a record torn by a crash) is zeroed.
    ///
    /// Growing it to `capacity` needs blocks; without them (a full disk) it is mapped as
    /// large as it is, so the proxy still starts, and the next record that does not fit
    /// starts a new segment or fails as a counted append.
    pub(super) fn resume(
        path: &Path,
        first: u64,
        len: usize,
        written: usize,
        capacity: usize,
    ) -> std::io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut segment = Self::unmapped(file, first, len);
        if let Err(e) = segment.map_to(capacity.max(written)) {
            tracing::warn!(error = %e, "usage journal: no room to grow the last segment");
            if segment.map_to(written).is_err() {
                // Its records stay readable; it takes no more, and is cut at the next roll.
                segment.map = None;
            }
        }
        if let Some(torn) = segment.map.as_mut().and_then(|m| m.get_mut(len..written)) {
            torn.fill(0);
        }
        Ok(segment)
    }

    fn unmapped(file: File, first: u64, len: usize) -> Self {
        Self {
            first,
            file,
            map: None,
            len,
        }
    }

    /// Allocates the file to `capacity` bytes (it never shrinks here) and maps all of it.
    fn map_to(&mut self, capacity: usize) -> std::io::Result<()> {
        self.map = None;
        let size = self.file.metadata()?.len();
        let capacity = u64::try_from(capacity).unwrap_or(u64::MAX).max(size).max(1);
        if capacity > size {
            allocate(&mut self.file, size, capacity)?;
        }
        let len = usize::try_from(capacity).map_err(std::io::Error::other)?;
        // SAFETY: the mapping covers blocks allocated above, within the file's length, and
        // this process shrinks the file only in `finish`, after the mapping is dropped. The
        // journal directory's lock (`Journal::open`) keeps other sluice processes from it;
        // another program cutting the segment being written would fault the writer
        // (`SIGBUS`), which docs/operations.md warns of. The mapping is private to this
        // value and written only through `&mut self`.
        #[allow(unsafe_code)]
        let map = unsafe { MmapOptions::new().len(len).map_mut(&self.file)? };
        self.map = Some(map);
        Ok(())
    }

    /// Room left for records.
    pub(super) fn room(&self) -> usize {
        self.map
            .as_ref()
            .map_or(0, |m| m.len().saturating_sub(self.len))
    }

    /// Maps a segment that holds no record yet at `capacity` bytes: one record larger than
    /// a segment, or a segment that had no room when it was created.
    pub(super) fn grow_to(&mut self, capacity: usize) -> std::io::Result<()> {
        self.map_to(capacity)
    }

    /// Appends `line` if it fits; false (nothing written) if it does not.
    pub(super) fn push(&mut self, line: &[u8]) -> bool {
        let end = self.len.saturating_add(line.len());
        let Some(slot) = self.map.as_mut().and_then(|m| m.get_mut(self.len..end)) else {
            return false;
        };
        slot.copy_from_slice(line);
        let before = self.len;
        self.len = end;
        // Each first store into a page is a fault (ext4 readies the page for writing). The
        // next chunk's pages are readied in one call as this one is entered: cheaper than a
        // fault per page, and never needed for correctness (the stores fault otherwise).
        if before / PREFAULT_CHUNK != end / PREFAULT_CHUNK
            && let Some(map) = self.map.as_ref()
        {
            let next = (end / PREFAULT_CHUNK + 1) * PREFAULT_CHUNK;
            let len = PREFAULT_CHUNK.min(map.len().saturating_sub(next));
            if len > 0 {
                let _ = map.advise_range(memmap2::Advice::PopulateWrite, next, len);
            }
        }
        true
    }

    /// Cuts the file to its records: the mapping goes first (a mapped page past the end of
    /// its file is a `SIGBUS`).
    pub(super) fn finish(&mut self) -> std::io::Result<()> {
        self.map = None;
        self.file.set_len(self.len as u64)
    }
}

/// Where the written bytes of a segment's `text` end: after its last non-zero byte.
pub(super) fn written_end(text: &[u8]) -> usize {
    // By pages from the end: a segment is mostly zeros after a crash, and this runs at start.
    let mut end = text.len();
    for page in text.rchunks(4096) {
        if let Some(last) = page.iter().rposition(|b| *b != 0) {
            return end - page.len() + last + 1;
        }
        end -= page.len();
    }
    0
}

/// Gives `file` real blocks from `from` to `to`: `fallocate`, or zeros written on a
/// filesystem without it.
fn allocate(file: &mut File, from: u64, to: u64) -> std::io::Result<()> {
    match rustix::fs::fallocate(&*file, rustix::fs::FallocateFlags::empty(), from, to - from) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
            let fs = rustix::fs::fstatvfs(&*file)?;
            if fs.f_bavail.saturating_mul(fs.f_frsize) < to - from {
                return Err(rustix::io::Errno::NOSPC.into());
            }
            file.seek(SeekFrom::Start(from))?;
            let zeros = [0u8; 64 << 10];
            let mut left = to - from;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                file.write_all(zeros.get(..n).unwrap_or_default())?;
                left -= n as u64;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::written_end;

    #[test]
    fn the_written_end_is_after_the_last_non_zero_byte() {
        assert_eq!(written_end(&[]), 0);
        assert_eq!(written_end(&[0; 10_000]), 0);
        for at in [0, 1, 4095, 4096, 4097, 9_999] {
            let mut text = vec![0u8; 10_000];
            text[at] = b'}';
            assert_eq!(written_end(&text), at + 1, "non-zero byte at {at}");
        }
    }
}
