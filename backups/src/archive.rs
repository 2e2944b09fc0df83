//! Tar archives of a directory tree: the plain stream of a PVC backup, and its restore.
//!
//! Writing walks the tree without following symbolic links, in a stable order (names sorted,
//! a directory's entries before its subdirectories' contents), and keeps modes, owners and
//! modification times; a file with several names is stored once and its other names as hard
//! links. Each regular file is opened and its size read from the open file; the
//! archive records exactly that many bytes. A file that shrinks while it is read is padded
//! with zeros and one that changes is reported (as GNU tar does, "file changed as we read
//! it"); a file removed between listing and reading is reported as vanished. Sockets, FIFOs and
//! devices are skipped and reported. Anything else that cannot be read (e.g. permissions) fails
//! the archive: a backup that silently lacks files would be worse than a failed one.
//!
//! [`archive_source`] runs the writer on a blocking thread and is read as the pipeline's
//! source; when the writer fails, the source's last read is an error, so a failed archive can
//! never be uploaded as a complete one.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tar::{EntryType, Header, HeaderMode};
use tokio::io::DuplexStream;
use tokio::task::JoinHandle;
use tokio_util::io::SyncIoBridge;

use crate::source::CheckedSource;

/// How many paths of each kind of irregularity are named in [`ArchiveStats`].
const NAMED: usize = 20;

/// What an archive holds, and what was irregular while it was written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveStats {
    /// Regular files.
    pub files: u64,
    /// Directories (the root not counted).
    pub directories: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Hard links to a file archived earlier (its data is stored once).
    #[serde(default)]
    pub hard_links: u64,
    /// Bytes of file contents.
    pub bytes: u64,
    /// Files whose size or modification time changed while they were read.
    #[serde(default)]
    pub changed: Irregular,
    /// Entries removed between listing their directory and reading them.
    #[serde(default)]
    pub vanished: Irregular,
    /// Sockets, FIFOs and devices, which are not archived.
    #[serde(default)]
    pub skipped: Irregular,
}

/// A count of irregular entries and the first few of their paths.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Irregular {
    /// How many.
    pub count: u64,
    /// The first [`NAMED`] paths, relative to the root.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

impl Irregular {
    fn note(&mut self, path: &Path) {
        self.count += 1;
        if self.paths.len() < NAMED {
            self.paths.push(path.display().to_string());
        }
    }
}

/// What the Job of a PVC backup reports as its termination message: the object it wrote and
/// what it archived, or why it failed. The operator does not take its word for success: it
/// checks the object and its manifest in the bucket itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobReport {
    /// The object key the run wrote (or tried to).
    pub object_key: String,
    /// SHA-256 of the ciphertext, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Bytes of ciphertext, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_bytes: Option<u64>,
    /// What was archived, when the archive was complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveStats>,
    /// Why it failed (a CamelCase reason), when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Kubernetes keeps at most this many bytes of a termination message.
pub const TERMINATION_MESSAGE_LIMIT: usize = 4096;

impl JobReport {
    /// The report as JSON that fits a termination message: the named paths are dropped first
    /// (their counts stay), then the message is shortened, then the longest text is halved
    /// until it fits (JSON writes a control character as six bytes, so no length in
    /// characters is safe by itself).
    pub fn to_termination_message(&self) -> String {
        let mut report = self.clone();
        let fits = |r: &JobReport| {
            serde_json::to_string(r)
                .ok()
                .filter(|j| j.len() <= TERMINATION_MESSAGE_LIMIT)
        };
        if let Some(json) = fits(&report) {
            return json;
        }
        if let Some(a) = report.archive.as_mut() {
            a.changed.paths.clear();
            a.vanished.paths.clear();
            a.skipped.paths.clear();
        }
        if let Some(json) = fits(&report) {
            return json;
        }
        if let Some(m) = report.message.as_mut() {
            let keep = m
                .char_indices()
                .nth(1500)
                .map(|(i, _)| i)
                .unwrap_or(m.len());
            m.truncate(keep);
            m.push_str("...");
        }
        report.object_key.truncate(
            report
                .object_key
                .char_indices()
                .nth(1024)
                .map_or(report.object_key.len(), |(i, _)| i),
        );
        loop {
            if let Some(json) = fits(&report) {
                return json;
            }
            let mut texts: Vec<&mut String> = vec![&mut report.object_key];
            texts.extend(report.sha256.as_mut());
            texts.extend(report.reason.as_mut());
            texts.extend(report.message.as_mut());
            let Some(longest) = texts
                .into_iter()
                .filter(|t| !t.is_empty())
                .max_by_key(|t| t.len())
            else {
                return serde_json::to_string(&report).unwrap_or_default();
            };
            let half = longest.chars().count() / 2;
            let keep = longest.char_indices().nth(half).map_or(0, |(i, _)| i);
            longest.truncate(keep);
        }
    }
}

/// Why an archive could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The root is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// A path could not be read.
    #[error("reading {path} failed: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// Writing the archive failed (the pipeline stopped reading, or its output failed).
    #[error("writing the archive failed: {0}")]
    Write(io::Error),
    /// The archive is damaged or is not a tar archive.
    #[error("the archive is not a complete tar archive: {0}")]
    Damaged(io::Error),
    /// The restore target cannot be used.
    #[error("{path}: {message}")]
    Target { path: PathBuf, message: String },
    /// Writing a restored entry failed.
    #[error("restoring {path} failed: {source}")]
    Unpack { path: PathBuf, source: io::Error },
}

/// Writes a tar archive of the tree under `root` to `out`.
pub fn write_tree<W: Write>(root: &Path, out: W) -> Result<(ArchiveStats, W), ArchiveError> {
    let meta = fs::metadata(root).map_err(|source| ArchiveError::Read {
        path: root.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(ArchiveError::NotADirectory(root.to_path_buf()));
    }
    let mut stats = ArchiveStats::default();
    // Files with more than one name, by (device, inode): the first name archived.
    let mut linked: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut builder = tar::Builder::new(out);
    builder.mode(HeaderMode::Complete);
    builder.follow_symlinks(false);
    // Directories still to list, relative to the root; popped last-in first-out, pushed in
    // reverse so that the walk reads in name order.
    let mut pending: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(dir) = pending.pop() {
        let names = match list(&root.join(&dir)) {
            Ok(names) => names,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.as_os_str().is_empty() => {
                stats.vanished.note(&dir);
                continue;
            }
            Err(source) => {
                return Err(ArchiveError::Read {
                    path: root.join(&dir),
                    source,
                });
            }
        };
        let mut subdirs = Vec::new();
        for name in names {
            let rel = dir.join(&name);
            let full = root.join(&rel);
            let meta = match fs::symlink_metadata(&full) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    stats.vanished.note(&rel);
                    continue;
                }
                Err(source) => return Err(ArchiveError::Read { path: full, source }),
            };
            let kind = meta.file_type();
            if kind.is_dir() {
                let mut header = Header::new_gnu();
                header.set_metadata_in_mode(&meta, HeaderMode::Complete);
                header.set_entry_type(EntryType::Directory);
                header.set_size(0);
                builder
                    .append_data(&mut header, &rel, io::empty())
                    .map_err(ArchiveError::Write)?;
                stats.directories += 1;
                subdirs.push(rel);
            } else if kind.is_symlink() {
                let target = match fs::read_link(&full) {
                    Ok(t) => t,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        stats.vanished.note(&rel);
                        continue;
                    }
                    Err(source) => return Err(ArchiveError::Read { path: full, source }),
                };
                let mut header = Header::new_gnu();
                header.set_metadata_in_mode(&meta, HeaderMode::Complete);
                header.set_entry_type(EntryType::Symlink);
                header.set_size(0);
                builder
                    .append_link(&mut header, &rel, &target)
                    .map_err(ArchiveError::Write)?;
                stats.symlinks += 1;
            } else if kind.is_file() && meta.nlink() > 1 {
                match linked.get(&(meta.dev(), meta.ino())) {
                    Some(first) => {
                        let mut header = Header::new_gnu();
                        header.set_metadata_in_mode(&meta, HeaderMode::Complete);
                        header.set_entry_type(EntryType::Link);
                        header.set_size(0);
                        builder
                            .append_link(&mut header, &rel, first)
                            .map_err(ArchiveError::Write)?;
                        stats.hard_links += 1;
                    }
                    None => {
                        append_file(&mut builder, &full, &rel, &mut stats)?;
                        linked.insert((meta.dev(), meta.ino()), rel.clone());
                    }
                }
            } else if kind.is_file() {
                append_file(&mut builder, &full, &rel, &mut stats)?;
            } else {
                stats.skipped.note(&rel);
            }
        }
        pending.extend(subdirs.into_iter().rev());
    }
    let out = builder.into_inner().map_err(ArchiveError::Write)?;
    Ok((stats, out))
}

fn list(dir: &Path) -> io::Result<Vec<std::ffi::OsString>> {
    let mut names = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

/// Appends one regular file: exactly the size its open handle reported, zero-padded if it
/// shrank; a change while reading is noted.
fn append_file<W: Write>(
    builder: &mut tar::Builder<W>,
    full: &Path,
    rel: &Path,
    stats: &mut ArchiveStats,
) -> Result<(), ArchiveError> {
    let read_error = |source| ArchiveError::Read {
        path: full.to_path_buf(),
        source,
    };
    let file = match File::open(full) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            stats.vanished.note(rel);
            return Ok(());
        }
        Err(e) => return Err(read_error(e)),
    };
    let before = file.metadata().map_err(read_error)?;
    if !before.is_file() {
        // Replaced by something else since it was listed.
        stats.changed.note(rel);
        return Ok(());
    }
    let size = before.len();
    let mut header = Header::new_gnu();
    header.set_metadata_in_mode(&before, HeaderMode::Complete);
    header.set_entry_type(EntryType::Regular);
    header.set_size(size);
    let mut data = Exactly {
        inner: file,
        left: size,
        short: false,
        error: None,
    };
    let appended = builder.append_data(&mut header, rel, &mut data);
    if let Some(e) = data.error.take() {
        return Err(read_error(e));
    }
    appended.map_err(ArchiveError::Write)?;
    let after = data.inner.metadata().map_err(read_error)?;
    if data.short || after.len() != size || after.modified().ok() != before.modified().ok() {
        stats.changed.note(rel);
    }
    stats.files += 1;
    stats.bytes += size;
    Ok(())
}

/// Reads exactly `left` bytes of `inner`: zeros once it ends early. A read error is kept aside
/// (so that it is reported as the file's, not the archive's).
struct Exactly {
    inner: File,
    left: u64,
    short: bool,
    error: Option<io::Error>,
}

impl Read for Exactly {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = if self.short {
            0
        } else {
            match self.inner.read(&mut buf[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
                Err(e) => {
                    let message = e.to_string();
                    self.error = Some(e);
                    return Err(io::Error::other(message));
                }
            }
        };
        let n = if n == 0 {
            self.short = true;
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// Reads a whole archive, checking every header and reading every entry's data to its end:
/// proof that it is complete and readable. Nothing is written.
pub fn check<R: Read>(input: R) -> Result<ArchiveStats, ArchiveError> {
    let mut stats = ArchiveStats::default();
    let mut archive = tar::Archive::new(input);
    for entry in archive.entries().map_err(ArchiveError::Damaged)? {
        let mut entry = entry.map_err(ArchiveError::Damaged)?;
        let kind = entry.header().entry_type();
        let size = entry.header().size().map_err(ArchiveError::Damaged)?;
        let n = io::copy(&mut entry, &mut io::sink()).map_err(ArchiveError::Damaged)?;
        if n != size {
            let path = entry
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            return Err(ArchiveError::Damaged(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path} ends after {n} of its {size} bytes"),
            )));
        }
        count(&mut stats, kind, n);
    }
    Ok(stats)
}

fn count(stats: &mut ArchiveStats, kind: EntryType, bytes: u64) {
    match kind {
        EntryType::Directory => stats.directories += 1,
        EntryType::Symlink => stats.symlinks += 1,
        EntryType::Link => stats.hard_links += 1,
        EntryType::Regular | EntryType::Continuous => {
            stats.files += 1;
            stats.bytes += bytes;
        }
        _ => {}
    }
}

/// How [`unpack`] restores.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnpackOptions {
    /// Restore owners (uid/gid) too; needs root.
    pub owners: bool,
    /// Allow a target directory that is not empty (existing files are replaced).
    pub overwrite: bool,
}

/// Restores an archive into `target` (created if missing; must be empty unless
/// `options.overwrite`). Entries that would land outside `target` are refused by the tar
/// reader. Modes and modification times are restored; owners when asked.
pub fn unpack<R: Read>(
    input: R,
    target: &Path,
    options: UnpackOptions,
) -> Result<ArchiveStats, ArchiveError> {
    let target_error = |message: String| ArchiveError::Target {
        path: target.to_path_buf(),
        message,
    };
    match fs::read_dir(target) {
        Ok(mut entries) => {
            if entries.next().is_some() && !options.overwrite {
                return Err(target_error(
                    "is not empty; restore into an empty directory, or allow replacing files"
                        .into(),
                ));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(target).map_err(|e| target_error(e.to_string()))?;
        }
        Err(e) => return Err(target_error(e.to_string())),
    }
    let mut stats = ArchiveStats::default();
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(options.owners);
    archive.set_overwrite(options.overwrite);
    archive.set_unpack_xattrs(false);
    // Directory modes and times are applied after their contents (a read-only directory could
    // not be filled otherwise; its time would change as it is filled).
    let mut directories = Vec::new();
    for entry in archive.entries().map_err(ArchiveError::Damaged)? {
        let mut entry = entry.map_err(ArchiveError::Damaged)?;
        let kind = entry.header().entry_type();
        let path = entry.path().map_err(ArchiveError::Damaged)?.into_owned();
        if !inside(&path) {
            return Err(ArchiveError::Unpack {
                path,
                source: io::Error::other("the entry would be written outside the target"),
            });
        }
        if kind == EntryType::Directory {
            fs::create_dir_all(target.join(&path)).map_err(|source| ArchiveError::Unpack {
                path: path.clone(),
                source,
            })?;
            count(&mut stats, kind, 0);
            directories.push(entry);
            continue;
        }
        let size = entry.header().size().unwrap_or(0);
        let unpacked = entry
            .unpack_in(target)
            .map_err(|source| ArchiveError::Unpack {
                path: path.clone(),
                source,
            })?;
        if !unpacked {
            return Err(ArchiveError::Unpack {
                path,
                source: io::Error::other("the entry would be written outside the target"),
            });
        }
        count(&mut stats, kind, size);
    }
    for mut dir in directories.into_iter().rev() {
        let path = dir.path().map_err(ArchiveError::Damaged)?.into_owned();
        dir.unpack_in(target)
            .map_err(|source| ArchiveError::Unpack { path, source })?;
    }
    Ok(stats)
}

/// A blocking reader of an archive (e.g. [`unpack`] or [`check`]) fed through an async writer:
/// write the archive into the returned stream, shut it down, then await the handle. Whatever
/// follows the archive's end is read and dropped, so the writer is never refused midway.
pub fn spawn_reader<F>(read: F) -> (DuplexStream, JoinHandle<Result<ArchiveStats, ArchiveError>>)
where
    F: FnOnce(&mut dyn Read) -> Result<ArchiveStats, ArchiveError> + Send + 'static,
{
    let (writer, reader) = tokio::io::duplex(1 << 20);
    let handle = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || {
        let mut input = SyncIoBridge::new_with_handle(reader, handle);
        let result = read(&mut input);
        let _ = io::copy(&mut input, &mut io::sink());
        result
    });
    (writer, task)
}

/// Whether a relative path stays below the directory it is joined to.
fn inside(path: &Path) -> bool {
    use std::path::Component;
    path.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// What [`archive_source`] archived, once its source has been read to its end.
pub type StatsSlot = Arc<Mutex<Option<ArchiveStats>>>;

/// The tree under `root` archived on a blocking thread, read as an async source: its end is an
/// error when the archive failed, and the slot holds what it archived once it ended well.
/// Needs a Tokio runtime.
pub fn archive_source(root: PathBuf) -> (CheckedSource<DuplexStream>, StatsSlot) {
    let (reader, writer) = tokio::io::duplex(1 << 20);
    let slot: StatsSlot = Arc::new(Mutex::new(None));
    let filled = slot.clone();
    let handle = tokio::runtime::Handle::current();
    let end = tokio::task::spawn_blocking(move || {
        let out = SyncIoBridge::new_with_handle(writer, handle);
        let (stats, mut out) =
            write_tree(&root, out).map_err(|e| io::Error::other(e.to_string()))?;
        out.flush()?;
        out.shutdown()?;
        if let Ok(mut slot) = filled.lock() {
            *slot = Some(stats);
        }
        Ok(())
    });
    (CheckedSource::new(reader, end), slot)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("config/nested")).unwrap();
        fs::create_dir_all(root.join("empty")).unwrap();
        fs::write(root.join("config/settings.json"), b"{\"a\":1}").unwrap();
        fs::write(root.join("config/nested/big.bin"), vec![7u8; 300_000]).unwrap();
        fs::write(root.join("script.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(root.join("script.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        let long = "n".repeat(180);
        fs::write(root.join("config").join(&long), b"long name").unwrap();
        symlink("config/settings.json", root.join("current")).unwrap();
        symlink("/nowhere/at/all", root.join("dangling")).unwrap();
        dir
    }

    fn archive(root: &Path) -> (ArchiveStats, Vec<u8>) {
        write_tree(root, Vec::new()).unwrap()
    }

    fn snapshot(root: &Path) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                let meta = fs::symlink_metadata(&path).unwrap();
                let what = if meta.file_type().is_symlink() {
                    format!("link {}", fs::read_link(&path).unwrap().display())
                } else if meta.is_dir() {
                    stack.push(path.clone());
                    format!("dir {:o}", meta.permissions().mode() & 0o7777)
                } else {
                    let data = fs::read(&path).unwrap();
                    // tar keeps modification times in whole seconds.
                    let mtime = meta
                        .modified()
                        .unwrap()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    let sum: u64 = data.iter().map(|b| *b as u64).sum();
                    format!(
                        "file {:o} {} {mtime} {sum}",
                        meta.permissions().mode() & 0o7777,
                        data.len(),
                    )
                };
                out.push((rel, what));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_tree_round_trips_with_modes_links_and_times() {
        let src = tree();
        let (stats, bytes) = archive(src.path());
        assert_eq!(stats.files, 4);
        assert_eq!(stats.directories, 3);
        assert_eq!(stats.symlinks, 2);
        assert_eq!(stats.bytes, 7 + 300_000 + 18 + 9);
        assert_eq!(
            stats.changed.count + stats.vanished.count + stats.skipped.count,
            0
        );

        assert_eq!(check(&bytes[..]).unwrap(), stats);
        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("restored");
        let restored = unpack(&bytes[..], &target, UnpackOptions::default()).unwrap();
        assert_eq!(restored, stats);
        assert_eq!(snapshot(&target), snapshot(src.path()));
    }

    #[test]
    fn a_job_report_always_fits_a_termination_message() {
        let mut archive = ArchiveStats::default();
        for i in 0..NAMED {
            archive
                .changed
                .note(&PathBuf::from(format!("{i}-{}", "x".repeat(300))));
        }
        let report = JobReport {
            object_key: "k".into(),
            archive: Some(archive),
            reason: Some("SourceFailed".into()),
            message: Some("m".repeat(10_000)),
            ..JobReport::default()
        };
        let text = report.to_termination_message();
        assert!(text.len() <= TERMINATION_MESSAGE_LIMIT, "{}", text.len());
        let back: JobReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back.archive.unwrap().changed.count, NAMED as u64);
        assert_eq!(back.reason.as_deref(), Some("SourceFailed"));
    }

    /// Found by the fuzzer: a reason of 3,297 characters with control characters in it, which
    /// JSON writes as six bytes each, overflowed the limit when only the message was shortened.
    #[test]
    fn every_text_is_shortened_until_the_report_fits() {
        let controls = "\u{1}\t\u{7f}G".repeat(1200);
        let report = JobReport {
            object_key: controls.clone(),
            sha256: Some(controls.clone()),
            reason: Some(controls.clone()),
            message: Some(controls),
            ..JobReport::default()
        };
        let text = report.to_termination_message();
        assert!(text.len() <= TERMINATION_MESSAGE_LIMIT, "{}", text.len());
        let back: JobReport = serde_json::from_str(&text).unwrap();
        assert!(back.reason.is_some_and(|r| !r.is_empty()));
    }

    #[test]
    fn hard_links_are_stored_once_and_restored_as_links() {
        use std::os::unix::fs::MetadataExt;
        let src = tree();
        fs::hard_link(
            src.path().join("config/nested/big.bin"),
            src.path().join("big-again.bin"),
        )
        .unwrap();
        let (stats, bytes) = archive(src.path());
        assert_eq!((stats.files, stats.hard_links), (4, 1));
        assert_eq!(stats.bytes, 7 + 300_000 + 18 + 9, "the data is stored once");
        assert_eq!(check(&bytes[..]).unwrap(), stats);
        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("restored");
        unpack(&bytes[..], &target, UnpackOptions::default()).unwrap();
        let a = fs::metadata(target.join("big-again.bin")).unwrap();
        let b = fs::metadata(target.join("config/nested/big.bin")).unwrap();
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
        assert_eq!(snapshot(&target), snapshot(src.path()));
    }

    #[test]
    fn the_order_is_stable() {
        let src = tree();
        assert_eq!(archive(src.path()).1, archive(src.path()).1);
    }

    #[test]
    fn special_files_are_skipped_and_named() {
        let src = tree();
        let _socket = std::os::unix::net::UnixListener::bind(src.path().join("app.sock")).unwrap();
        let (stats, _) = archive(src.path());
        assert_eq!(stats.skipped.count, 1);
        assert_eq!(stats.skipped.paths, vec!["app.sock".to_string()]);
        assert_eq!(stats.files, 4);
    }

    #[test]
    fn a_file_that_shrinks_while_read_keeps_the_archive_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        fs::write(&path, vec![1u8; 10_000]).unwrap();
        let file = File::open(&path).unwrap();
        // The file is cut to 100 bytes after its size was read.
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(100)
            .unwrap();
        let mut exact = Exactly {
            inner: file,
            left: 10_000,
            short: false,
            error: None,
        };
        let mut out = Vec::new();
        exact.read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 10_000);
        assert!(exact.short);
        assert!(out[..100].iter().all(|b| *b == 1) && out[100..].iter().all(|b| *b == 0));
    }

    #[test]
    fn restoring_refuses_a_non_empty_target_and_damaged_archives() {
        let src = tree();
        let (_, bytes) = archive(src.path());
        let out = tempfile::tempdir().unwrap();
        fs::write(out.path().join("precious"), b"x").unwrap();
        let e = unpack(&bytes[..], out.path(), UnpackOptions::default()).unwrap_err();
        assert!(e.to_string().contains("is not empty"), "{e}");
        assert_eq!(fs::read(out.path().join("precious")).unwrap(), b"x");

        // Cut inside the big file's data: the reader notices the archive ends too early.
        let cut = &bytes[..bytes.len() / 2];
        let e = check(cut).unwrap_err();
        assert!(matches!(e, ArchiveError::Damaged(_)), "{e}");
    }

    #[test]
    fn entries_outside_the_target_are_refused() {
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_size(4);
        header.set_mode(0o644);
        let name = b"../escape";
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_cksum();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(b"evil");
        bytes.resize(512 * 2, 0);
        bytes.resize(512 * 4, 0);
        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("t");
        let e = unpack(&bytes[..], &target, UnpackOptions::default()).unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        assert!(!out.path().join("escape").exists());
    }

    #[test]
    fn the_root_must_be_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"x").unwrap();
        assert!(matches!(
            write_tree(&file, Vec::new()),
            Err(ArchiveError::NotADirectory(_))
        ));
        assert!(matches!(
            write_tree(&dir.path().join("missing"), Vec::new()),
            Err(ArchiveError::Read { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_source_ends_in_an_error_when_the_archive_fails() {
        use tokio::io::AsyncReadExt;
        let src = tree();
        let (mut ok, slot) = archive_source(src.path().to_path_buf());
        let mut bytes = Vec::new();
        ok.read_to_end(&mut bytes).await.unwrap();
        let stats = slot.lock().unwrap().clone().unwrap();
        assert_eq!(check(&bytes[..]).unwrap(), stats);

        let (mut bad, _) = archive_source(src.path().join("missing"));
        let e = bad.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
