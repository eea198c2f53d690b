//! Segment files: append-only frames `len (u32 BE) | crc32c (u32 BE) | bytes`.
//!
//! Segments live in `<dir>/log/` and are named by the index of their first record
//! (`00000000000000000000.seg`). On open every segment is scanned; a torn or corrupt tail of the
//! last one (a crash mid-write) is truncated and made durable, corruption anywhere else is an
//! error: those records were acknowledged, so the log must not silently lose them.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use super::AuditError;
use super::record::MAX_RECORD_BYTES;

/// Bytes of a frame header.
pub(crate) const HEADER: usize = 8;
/// A new segment is started once the current one reaches this size.
pub(crate) const SEGMENT_TARGET: u64 = 64 * 1024 * 1024;

/// Appends the frame of `bytes` to `out`.
pub(crate) fn encode_frame(bytes: &[u8], out: &mut Vec<u8>) {
    // Records are at most MAX_RECORD_BYTES, so the length always fits.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(bytes).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Splits `buf` into whole, checksum-valid frames; returns them and the length of that valid
/// prefix. Scanning stops at the first short, oversized or corrupt frame.
pub(crate) fn scan(buf: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some(header) = buf.get(at..at + HEADER) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 || len > MAX_RECORD_BYTES {
            break;
        }
        let Some(body) = buf.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if crc32c::crc32c(body) != crc {
            break;
        }
        frames.push(body);
        at += HEADER + len;
    }
    (frames, at)
}

/// The open tail segment, ready for appends.
#[derive(Debug)]
pub(crate) struct Tail {
    pub(crate) dir: PathBuf,
    pub(crate) file: File,
    /// Index of the segment's first record (its name).
    first: u64,
    pub(crate) len: u64,
    /// Index the next record gets.
    pub(crate) next_index: u64,
    /// Test-only: skip the fdatasync, for the throughput baseline. Never a config option.
    #[cfg(test)]
    pub(crate) skip_sync: bool,
}

fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}.seg"))
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AuditError + 'a {
    move |source| AuditError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Opens (creating if needed) the segment log in `<dir>/log/`, truncating a torn tail, and calls
/// `visit` with every intact record in index order.
///
/// # Errors
/// I/O failures, or [`AuditError::Corrupt`] for damage before the tail.
pub(crate) fn open(dir: &Path, mut visit: impl FnMut(&[u8])) -> Result<Tail, AuditError> {
    let dir = dir.join("log");
    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    let mut firsts = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io("list", &dir))? {
        let entry = entry.map_err(io("list", &dir))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if let Ok(first) = stem.parse::<u64>() {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    if firsts.is_empty() {
        firsts.push(0);
    }
    let mut next_index = 0;
    let last = firsts.len() - 1;
    for (i, first) in firsts.iter().copied().enumerate() {
        let path = segment_path(&dir, first);
        if first != next_index {
            return Err(AuditError::Corrupt {
                path,
                problem: format!("segment starts at index {first}, expected {next_index}"),
            });
        }
        let mut buf = Vec::new();
        if i < last || path.exists() {
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut buf))
                .map_err(io("read", &path))?;
        }
        let (frames, valid) = scan(&buf);
        for frame in &frames {
            visit(frame);
        }
        next_index += frames.len() as u64;
        if valid < buf.len() {
            if i < last {
                return Err(AuditError::Corrupt {
                    path,
                    problem: format!("damaged frame at byte {valid} of a sealed segment"),
                });
            }
            tracing::warn!(path = %path.display(), kept = valid, dropped = buf.len() - valid,
                "audit log: truncating torn tail");
        }
        if i == last {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io("open", &path))?;
            file.set_len(valid as u64).map_err(io("truncate", &path))?;
            file.sync_all().map_err(io("fsync", &path))?;
            sync_dir(&dir)?;
            let mut tail = Tail {
                dir: dir.clone(),
                file,
                first,
                len: valid as u64,
                next_index,
                #[cfg(test)]
                skip_sync: false,
            };
            seek_end(&mut tail)?;
            return Ok(tail);
        }
    }
    Err(AuditError::Corrupt {
        path: dir,
        problem: "no segment".to_owned(),
    })
}

fn seek_end(tail: &mut Tail) -> Result<(), AuditError> {
    use std::io::Seek as _;
    tail.file
        .seek(std::io::SeekFrom::Start(tail.len))
        .map_err(io("seek", &tail.dir))?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

impl Tail {
    /// Writes `frames` (already encoded) and makes them durable with one `fdatasync`.
    pub(crate) fn write_durable(&mut self, frames: &[u8], count: u64) -> Result<(), AuditError> {
        if self.len >= SEGMENT_TARGET {
            self.roll()?;
        }
        let path = segment_path(&self.dir, self.first);
        self.file.write_all(frames).map_err(io("write", &path))?;
        #[cfg(test)]
        let sync = !self.skip_sync;
        #[cfg(not(test))]
        let sync = true;
        if sync {
            self.file.sync_data().map_err(io("fdatasync", &path))?;
        }
        self.len += frames.len() as u64;
        self.next_index += count;
        Ok(())
    }

    fn roll(&mut self) -> Result<(), AuditError> {
        let path = segment_path(&self.dir, self.next_index);
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(io("create", &path))?;
        sync_dir(&self.dir)?;
        self.file = file;
        self.first = self.next_index;
        self.len = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn frames(records: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            encode_frame(r, &mut out);
        }
        out
    }

    #[test]
    fn scan_stops_at_a_torn_or_corrupt_frame() {
        let buf = frames(&[b"one", b"two", b"three"]);
        let (all, len) = scan(&buf);
        assert_eq!(all, vec![&b"one"[..], b"two", b"three"]);
        assert_eq!(len, buf.len());
        let ends = [11, 22, 35];
        for cut in 0..buf.len() {
            let (some, valid) = scan(&buf[..cut]);
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(some.len(), whole, "cut at {cut}");
            assert_eq!(valid, if whole == 0 { 0 } else { ends[whole - 1] });
        }
        let mut bad = buf.clone();
        bad[HEADER + 3 + HEADER] ^= 1; // first byte of "two"
        let (some, valid) = scan(&bad);
        assert_eq!(some, vec![&b"one"[..]]);
        assert_eq!(valid, HEADER + 3);
    }

    #[test]
    fn open_truncates_a_torn_tail_and_keeps_the_intact_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut tail = open(dir.path(), |_| {}).unwrap();
        assert_eq!(tail.next_index, 0);
        tail.write_durable(&frames(&[b"a", b"bb"]), 2).unwrap();
        drop(tail);
        // A crash mid-write: half a frame at the end.
        let seg = dir.path().join("log").join(format!("{:020}.seg", 0));
        let mut torn = frames(&[b"ccc"]);
        torn.truncate(6);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&torn).unwrap();
        drop(f);
        let mut seen = Vec::new();
        let mut tail = open(dir.path(), |r| seen.push(r.to_vec())).unwrap();
        assert_eq!(seen, vec![b"a".to_vec(), b"bb".to_vec()]);
        assert_eq!(tail.next_index, 2);
        assert_eq!(
            std::fs::metadata(&seg).unwrap().len(),
            (2 * HEADER + 3) as u64
        );
        tail.write_durable(&frames(&[b"dddd"]), 1).unwrap();
        drop(tail);
        let mut seen = Vec::new();
        let tail = open(dir.path(), |r| seen.push(r.to_vec())).unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[2], b"dddd");
        assert_eq!(tail.next_index, 3);
    }
}
