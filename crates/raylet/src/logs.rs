//! A node's log files: the `logs` directory of its session, where each worker writes
//! `worker-<worker id>-<pid>.out` / `.err` and a daemon started by `rtd start` writes
//! `node.out`. The raylet lists and reads them for the state API (`rtd logs`, the
//! dashboard); a name from the wire is only ever a plain file name inside that
//! directory.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use rtd_common::proto::LogFile;

/// Most bytes one read returns; a follower asks again from where it stopped.
pub const MAX_READ: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{0:?} is not a log file name (a plain name from `rtd logs`, without '/')")]
    BadName(String),
    #[error("no log file {0:?} on this node")]
    NotFound(String),
    #[error("cannot read log file {name:?}: {source}")]
    Io { name: String, source: std::io::Error },
}

pub fn logs_dir(session_dir: &Path) -> PathBuf {
    session_dir.join("logs")
}

/// The node's log files, by name.
pub fn list(dir: &Path) -> Vec<LogFile> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<LogFile> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let meta = e.metadata().ok().filter(|m| m.is_file())?;
            let modified_ms = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            Some(LogFile { name: e.file_name().to_string_lossy().into_owned(), size: meta.len(), modified_ms })
        })
        .collect();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    files
}

fn path_of(dir: &Path, name: &str) -> Result<PathBuf, LogError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('\0') {
        return Err(LogError::BadName(name.to_string()));
    }
    Ok(dir.join(name))
}

/// Reads log `name` within `range`: from byte `offset` on when it is non-zero
/// (following a file), else from the range's start if it has one, else the file's
/// last `tail_lines` lines (all of it when `tail_lines` <= 0); at most `MAX_READ`
/// bytes. Returns the bytes and the offset just past them.
pub fn read(dir: &Path, name: &str, tail_lines: i64, offset: u64, range: LogRange) -> Result<(Vec<u8>, u64), LogError> {
    let path = path_of(dir, name)?;
    let io = |source| LogError::Io { name: name.to_string(), source };
    let mut file = std::fs::File::open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => LogError::NotFound(name.to_string()),
        _ => io(e),
    })?;
    let size = file.metadata().map_err(io)?.len();
    let limit = range.end.map_or(size, |end| end.min(size));
    let start = match (offset, range.start) {
        (0, Some(start)) => start.min(limit),
        (0, None) => limit.saturating_sub(MAX_READ),
        (offset, start) => offset.max(start.unwrap_or(0)).min(limit),
    };
    let end = (start + MAX_READ).min(limit);
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut data = Vec::with_capacity((end - start) as usize);
    file.take(end - start).read_to_end(&mut data).map_err(io)?;
    if offset == 0 && tail_lines > 0 {
        data = last_lines(data, tail_lines as usize);
    }
    Ok((data, end))
}

/// The part of a file a read may see: [start, end), either side open.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LogRange {
    pub start: Option<u64>,
    pub end: Option<u64>,
}

/// The last `n` lines of `data` (a final line without its newline counts).
fn last_lines(data: Vec<u8>, n: usize) -> Vec<u8> {
    let body = data.strip_suffix(b"\n").unwrap_or(&data);
    match body.iter().enumerate().rev().filter(|(_, b)| **b == b'\n').nth(n.saturating_sub(1)) {
        Some((i, _)) if n > 0 => data[i + 1..].to_vec(),
        _ => data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rtd-logs-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
        dir
    }

    #[test]
    fn tails_follows_and_lists() {
        let dir = dir_with("worker-a-1.out", "one\ntwo\nthree\n");
        assert_eq!(read(&dir, "worker-a-1.out", 2, 0, LogRange::default()).unwrap().0, b"two\nthree\n");
        assert_eq!(read(&dir, "worker-a-1.out", 0, 0, LogRange::default()).unwrap().0, b"one\ntwo\nthree\n");
        assert_eq!(read(&dir, "worker-a-1.out", 10, 0, LogRange::default()).unwrap().0, b"one\ntwo\nthree\n");
        let (_, end) = read(&dir, "worker-a-1.out", 1, 0, LogRange::default()).unwrap();
        std::fs::write(dir.join("worker-a-1.out"), "one\ntwo\nthree\nfour\n").unwrap();
        assert_eq!(read(&dir, "worker-a-1.out", 0, end, LogRange::default()).unwrap().0, b"four\n");
        let files = list(&dir);
        assert_eq!((files[0].name.as_str(), files[0].size), ("worker-a-1.out", 19));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_range_reads_only_its_part() {
        let dir = dir_with("worker-b-1.out", "one\ntwo\nthree\n");
        let part = |start, end| LogRange { start: Some(start), end };
        assert_eq!(read(&dir, "worker-b-1.out", 0, 0, part(0, Some(4))).unwrap(), (b"one\n".to_vec(), 4));
        assert_eq!(read(&dir, "worker-b-1.out", 0, 0, part(4, None)).unwrap().0, b"two\nthree\n");
        assert_eq!(read(&dir, "worker-b-1.out", 1, 0, part(0, Some(8))).unwrap().0, b"two\n");
        // A follower goes on within the range, and an end past the file is the file's.
        assert_eq!(read(&dir, "worker-b-1.out", 0, 6, part(4, Some(8))).unwrap().0, b"o\n");
        assert_eq!(read(&dir, "worker-b-1.out", 0, 0, part(8, Some(99))).unwrap().0, b"three\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn names_outside_the_directory_are_refused() {
        let dir = dir_with("x.out", "x");
        for bad in ["../x.out", "/etc/passwd", "..", "", "a\0b"] {
            assert!(matches!(read(&dir, bad, 0, 0, LogRange::default()), Err(LogError::BadName(_))), "{bad:?}");
        }
        assert!(matches!(read(&dir, "missing.out", 0, 0, LogRange::default()), Err(LogError::NotFound(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn last_lines_without_a_final_newline() {
        assert_eq!(last_lines(b"a\nb\nc".to_vec(), 2), b"b\nc");
        assert_eq!(last_lines(b"a\nb\n".to_vec(), 1), b"b\n");
    }
}
