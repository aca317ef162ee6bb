//! Packages: a `working_dir` or a `py_modules` entry as one zip file named by its
//! content, Ray's `gcs://_ray_pkg_<hash>.zip`.
//!
//! The driver packs a local directory ([`pack_directory`]) and stores the zip in the GCS
//! KV under its URI (the key is exactly the URI); every node that runs work in that
//! environment fetches it once and unpacks it ([`unpack`]) into a directory named by the
//! URI. Because the name is a hash of the content, the same content is uploaded once and
//! unpacked once per node, however many tasks, actors and jobs use it, and a changed
//! file gives a new package instead of a stale cache hit. Packing is deterministic:
//! entries in sorted order, fixed timestamps and modes, so the same tree always gives the
//! same bytes. A `.zip` (or a wheel) given as-is is used as it is, named by its bytes.

use std::fs;
use std::io::{Cursor, Read, Write};
use std::path::{Component, Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;

use crate::error::RuntimeEnvError;

/// Ray's limit on a package: 500 MiB of files (`GCS_STORAGE_MAX_SIZE`).
pub const MAX_PACKAGE_SIZE: u64 = 500 << 20;

/// What every package URI starts with: it lives in the GCS KV.
pub const GCS_SCHEME: &str = "gcs://";

/// A packed directory or file: the GCS KV key (its URI) and value (the zip bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    pub uri: String,
    pub bytes: Vec<u8>,
}

/// How a directory's files are named inside its package.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Relative to the directory (a `working_dir`: it becomes the task's cwd).
    Contents,
    /// Under the directory's own name (a `py_modules` package: its parent goes on
    /// `sys.path`, so `import <name>` works).
    UnderOwnName,
}

/// Packs `dir`'s files into a package, leaving out `.git` and what the gitignore-style
/// `excludes` patterns (relative to `dir`) match. A `.zip` file is taken as it is.
pub fn pack_directory(dir: &Path, excludes: &[String]) -> Result<Package, RuntimeEnvError> {
    pack_path(dir, excludes, Layout::Contents, MAX_PACKAGE_SIZE)
}

/// Packs a directory (with `layout`), or takes a `.zip`/`.whl` file as it is; over `limit`
/// bytes of files is an error naming the size and the limit.
pub fn pack_path(path: &Path, excludes: &[String], layout: Layout, limit: u64) -> Result<Package, RuntimeEnvError> {
    let meta = fs::metadata(path).map_err(|_| RuntimeEnvError::Missing { what: "path", path: path.to_path_buf() })?;
    if meta.is_dir() {
        return pack_dir(path, excludes, layout, limit);
    }
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some(ext @ ("zip" | "whl")) => {
            let bytes = fs::read(path).map_err(RuntimeEnvError::io(path))?;
            // Refuse what could not be unpacked later, now, where the user can fix it.
            let size = unpacked_size(&bytes)?;
            if size > limit {
                return Err(RuntimeEnvError::TooLarge { what: "zip file (unpacked)", path: path.into(), size, limit });
            }
            Ok(Package { uri: uri_for(&bytes, ext), bytes })
        }
        _ => Err(RuntimeEnvError::Invalid(format!(
            "'{}' is a file, not a directory, a .zip or a .whl file",
            path.display()
        ))),
    }
}

/// The URI of a package with these bytes: `gcs://_ray_pkg_<16 hex of sha256>.<ext>`.
pub fn uri_for(bytes: &[u8], ext: &str) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{GCS_SCHEME}_ray_pkg_{hex}.{ext}")
}

/// Whether `s` names a package in the GCS (rather than a local path).
pub fn is_package_uri(s: &str) -> bool {
    s.starts_with(GCS_SCHEME)
}

/// The directory name a package unpacks into: its URI without the scheme and extension.
pub fn dir_name(uri: &str) -> String {
    let name = uri.strip_prefix(GCS_SCHEME).unwrap_or(uri);
    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
    stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

fn pack_dir(dir: &Path, excludes: &[String], layout: Layout, limit: u64) -> Result<Package, RuntimeEnvError> {
    let ignore = excludes_matcher(dir, excludes)?;
    let prefix = match layout {
        Layout::Contents => String::new(),
        Layout::UnderOwnName => {
            let canonical = fs::canonicalize(dir).map_err(RuntimeEnvError::io(dir))?;
            let name = canonical
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| RuntimeEnvError::Invalid(format!("'{}' has no usable directory name", dir.display())))?;
            format!("{name}/")
        }
    };
    // First the list (names and sizes only), so that a tree over the limit is refused
    // with its whole size before any file is read.
    let mut entries: Vec<(String, PathBuf, bool)> = Vec::new();
    let mut size = 0u64;
    let walk = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| !is_git_dir(e) && !is_excluded(&ignore, e));
    for entry in walk {
        let entry = entry.map_err(|e| {
            let path = e.path().map_or_else(|| dir.to_path_buf(), Path::to_path_buf);
            RuntimeEnvError::Io { path, source: e.into() }
        })?;
        let rel = entry.path().strip_prefix(dir).map_err(|e| RuntimeEnvError::Invalid(e.to_string()))?;
        let name = zip_name(rel)?;
        let is_dir = entry.file_type().is_dir();
        if !is_dir {
            size += entry
                .metadata()
                .map_err(|e| RuntimeEnvError::Io { path: entry.path().into(), source: e.into() })?
                .len();
        }
        entries.push((format!("{prefix}{name}"), entry.into_path(), is_dir));
    }
    if size > limit {
        return Err(RuntimeEnvError::TooLarge { what: "directory", path: dir.into(), size, limit });
    }
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(zip::DateTime::default())
        .large_file(size >= u32::MAX as u64);
    if !prefix.is_empty() {
        writer.add_directory(prefix.as_str(), options.unix_permissions(0o755))?;
    }
    for (name, path, is_dir) in entries {
        if is_dir {
            writer.add_directory(name, options.unix_permissions(0o755))?;
            continue;
        }
        let mode = file_mode(&path)?;
        writer.start_file(name, options.unix_permissions(mode))?;
        let mut file = fs::File::open(&path).map_err(RuntimeEnvError::io(&path))?;
        std::io::copy(&mut file, &mut writer).map_err(RuntimeEnvError::io(&path))?;
    }
    let bytes = writer.finish()?.into_inner();
    Ok(Package { uri: uri_for(&bytes, "zip"), bytes })
}

fn excludes_matcher(dir: &Path, excludes: &[String]) -> Result<Gitignore, RuntimeEnvError> {
    let mut builder = GitignoreBuilder::new(dir);
    for pattern in excludes {
        builder
            .add_line(None, pattern)
            .map_err(|e| RuntimeEnvError::Invalid(format!("excludes pattern {pattern:?}: {e}")))?;
    }
    builder.build().map_err(|e| RuntimeEnvError::Invalid(format!("excludes: {e}")))
}

fn is_git_dir(entry: &walkdir::DirEntry) -> bool {
    entry.file_type().is_dir() && entry.file_name() == ".git"
}

fn is_excluded(ignore: &Gitignore, entry: &walkdir::DirEntry) -> bool {
    entry.depth() > 0 && ignore.matched(entry.path(), entry.file_type().is_dir()).is_ignore()
}

/// A relative path as a zip entry name (`/`-separated UTF-8).
fn zip_name(rel: &Path) -> Result<String, RuntimeEnvError> {
    let mut parts = Vec::new();
    for component in rel.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str().ok_or_else(|| {
                RuntimeEnvError::Invalid(format!("file name {:?} is not UTF-8; it cannot go into a package", rel))
            })?),
            _ => return Err(RuntimeEnvError::Invalid(format!("unexpected path {rel:?} in a package"))),
        }
    }
    Ok(parts.join("/"))
}

/// Executable files stay executable; everything else is 0644 (the packer's umask and
/// owner do not leak into the package, so they do not change its hash).
fn file_mode(path: &Path) -> Result<u32, RuntimeEnvError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path).map_err(RuntimeEnvError::io(path))?.permissions().mode();
    Ok(if mode & 0o111 != 0 { 0o755 } else { 0o644 })
}

/// The total size of a zip's files once unpacked (checked against the limit up front,
/// so that a zip bomb is refused before it fills a disk).
fn unpacked_size(bytes: &[u8]) -> Result<u64, RuntimeEnvError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))?;
    let mut total = 0u64;
    for i in 0..archive.len() {
        total = total.saturating_add(archive.by_index_raw(i)?.size());
    }
    Ok(total)
}

/// Unpacks a package into `dest`, atomically: into a temporary directory beside it,
/// then renamed into place, so a reader sees all of it or nothing. When `dest` is already
/// there (another worker or process unpacked the same content first) it is kept.
/// Entries that would land outside `dest` (absolute, `..`) or are links are refused.
pub fn unpack(bytes: &[u8], dest: &Path) -> Result<(), RuntimeEnvError> {
    unpack_limited(bytes, dest, MAX_PACKAGE_SIZE)
}

pub fn unpack_limited(bytes: &[u8], dest: &Path, limit: u64) -> Result<(), RuntimeEnvError> {
    if dest.is_dir() {
        return Ok(());
    }
    let size = unpacked_size(bytes)?;
    if size > limit {
        return Err(RuntimeEnvError::TooLarge { what: "package (unpacked)", path: dest.into(), size, limit });
    }
    let parent = dest.parent().ok_or_else(|| RuntimeEnvError::Invalid(format!("no parent for {dest:?}")))?;
    fs::create_dir_all(parent).map_err(RuntimeEnvError::io(parent))?;
    let staging =
        tempfile::Builder::new().prefix(".unpacking-").tempdir_in(parent).map_err(RuntimeEnvError::io(parent))?;
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i)?;
        let name = entry.name()?.to_string();
        let rel = safe_relative(&name)?;
        if entry.is_symlink() {
            return Err(RuntimeEnvError::UnsafeEntry(format!("{name} (a symbolic link)")));
        }
        let target = staging.path().join(&rel);
        if entry.is_dir() {
            fs::create_dir_all(&target).map_err(RuntimeEnvError::io(&target))?;
            continue;
        }
        if let Some(dir) = target.parent() {
            fs::create_dir_all(dir).map_err(RuntimeEnvError::io(dir))?;
        }
        let mut content = Vec::with_capacity(entry.size().min(1 << 26) as usize);
        entry.read_to_end(&mut content).map_err(RuntimeEnvError::io(&target))?;
        let mut file = fs::File::create(&target).map_err(RuntimeEnvError::io(&target))?;
        file.write_all(&content).map_err(RuntimeEnvError::io(&target))?;
        if let Some(mode) = entry.unix_mode() {
            use std::os::unix::fs::PermissionsExt;
            let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
            fs::set_permissions(&target, fs::Permissions::from_mode(mode)).map_err(RuntimeEnvError::io(&target))?;
        }
    }
    let staged = staging.keep();
    match fs::rename(&staged, dest) {
        Ok(()) => Ok(()),
        // Someone else put the same content there meanwhile: theirs is as good.
        Err(_) if dest.is_dir() => {
            let _ = fs::remove_dir_all(&staged);
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staged);
            Err(RuntimeEnvError::Io { path: dest.into(), source: e })
        }
    }
}

/// An entry name as a path that stays inside the directory it is unpacked into.
fn safe_relative(name: &str) -> Result<PathBuf, RuntimeEnvError> {
    if name.contains('\0') || name.contains('\\') {
        return Err(RuntimeEnvError::UnsafeEntry(name.into()));
    }
    let mut rel = PathBuf::new();
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(RuntimeEnvError::UnsafeEntry(name.into()))
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(RuntimeEnvError::UnsafeEntry(name.into()));
    }
    Ok(rel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn write(root: &Path, rel: &str, content: &[u8]) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, content).expect("write");
    }

    fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<_> = walkdir::WalkDir::new(root)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let rel = e.path().strip_prefix(root).expect("under root").to_string_lossy().into_owned();
                (rel, fs::read(e.path()).expect("read"))
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn same_content_gives_the_same_uri_and_bytes() {
        let (a, b) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
        // Written in different orders, at different times.
        write(a.path(), "x.py", b"x = 1\n");
        write(a.path(), "pkg/y.py", b"y = 2\n");
        write(b.path(), "pkg/y.py", b"y = 2\n");
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(b.path(), "x.py", b"x = 1\n");
        let (pa, pb) = (pack_directory(a.path(), &[]).expect("pack"), pack_directory(b.path(), &[]).expect("pack"));
        assert_eq!(pa, pb);
        assert!(pa.uri.starts_with("gcs://_ray_pkg_") && pa.uri.ends_with(".zip"), "{}", pa.uri);
        assert_eq!(pa.uri.len(), "gcs://_ray_pkg_".len() + 16 + ".zip".len());
        write(b.path(), "x.py", b"x = 3\n");
        assert_ne!(pack_directory(b.path(), &[]).expect("pack").uri, pa.uri);
    }

    #[test]
    fn excludes_and_git_are_left_out() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "keep.py", b"1");
        write(dir.path(), ".git/HEAD", b"ref");
        write(dir.path(), "data/big.bin", b"big");
        write(dir.path(), "sub/a.log", b"log");
        write(dir.path(), "sub/b.py", b"b");
        write(dir.path(), "only_top.txt", b"t");
        write(dir.path(), "sub/only_top.txt", b"t2");
        let excludes = ["data/".to_string(), "*.log".to_string(), "/only_top.txt".to_string()];
        let package = pack_directory(dir.path(), &excludes).expect("pack");
        let out = tempfile::tempdir().expect("tmp");
        let dest = out.path().join("unpacked");
        unpack(&package.bytes, &dest).expect("unpack");
        let names: Vec<String> = files(&dest).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["keep.py", "sub/b.py", "sub/only_top.txt"]);
    }

    #[test]
    fn a_module_is_packed_under_its_name() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "my_mod/__init__.py", b"X = 1");
        let package = pack_path(&dir.path().join("my_mod"), &[], Layout::UnderOwnName, MAX_PACKAGE_SIZE).expect("pack");
        let dest = dir.path().join("out");
        unpack(&package.bytes, &dest).expect("unpack");
        assert_eq!(files(&dest), [("my_mod/__init__.py".to_string(), b"X = 1".to_vec())]);
    }

    #[test]
    fn over_the_limit_is_refused_naming_size_and_limit() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "a.bin", &vec![7u8; 3 << 20]);
        let err = pack_path(dir.path(), &[], Layout::Contents, 2 << 20).expect_err("too large");
        let message = err.to_string();
        assert!(message.contains("3.0 MiB") && message.contains("2 MiB limit"), "{message}");
        // Excluding the big file brings it under.
        assert!(pack_path(dir.path(), &["*.bin".into()], Layout::Contents, 2 << 20).is_ok());
    }

    #[test]
    fn a_zip_file_is_taken_as_it_is() {
        let dir = tempfile::tempdir().expect("tmp");
        write(&dir.path().join("src"), "m.py", b"m");
        let packed = pack_directory(&dir.path().join("src"), &[]).expect("pack");
        let zip_path = dir.path().join("code.zip");
        fs::write(&zip_path, &packed.bytes).expect("write");
        let taken = pack_directory(&zip_path, &[]).expect("zip accepted");
        assert_eq!(taken, packed);
        fs::write(dir.path().join("notes.txt"), b"x").expect("write");
        assert!(matches!(pack_directory(&dir.path().join("notes.txt"), &[]), Err(RuntimeEnvError::Invalid(_))));
        assert!(matches!(pack_directory(&dir.path().join("nope"), &[]), Err(RuntimeEnvError::Missing { .. })));
        fs::write(dir.path().join("bad.zip"), b"not a zip").expect("write");
        assert!(matches!(pack_directory(&dir.path().join("bad.zip"), &[]), Err(RuntimeEnvError::Zip(_))));
    }

    fn zip_with(name: &str) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        writer.start_file(name, SimpleFileOptions::default()).expect("start");
        writer.write_all(b"evil").expect("write");
        writer.finish().expect("finish").into_inner()
    }

    #[test]
    fn unpack_refuses_entries_outside_the_directory() {
        let dir = tempfile::tempdir().expect("tmp");
        for name in ["../escape.txt", "/etc/escape.txt", "a/../../escape.txt"] {
            let dest = dir.path().join("d").join("inner");
            let err = unpack(&zip_with(name), &dest).expect_err(name);
            assert!(matches!(err, RuntimeEnvError::UnsafeEntry(_)), "{name}: {err}");
            assert!(!dest.exists());
        }
        assert!(!dir.path().join("escape.txt").exists());
        // Nothing half-unpacked is left beside the destination.
        assert_eq!(fs::read_dir(dir.path().join("d")).expect("dir").count(), 0);
    }

    #[test]
    fn unpack_keeps_an_existing_directory() {
        let dir = tempfile::tempdir().expect("tmp");
        let dest = dir.path().join("pkg");
        unpack(&zip_with("a.txt"), &dest).expect("unpack");
        unpack(&zip_with("b.txt"), &dest).expect("second unpack is a no-op");
        assert!(dest.join("a.txt").exists() && !dest.join("b.txt").exists());
    }

    #[test]
    fn dir_names_come_from_uris() {
        assert_eq!(dir_name("gcs://_ray_pkg_0123456789abcdef.zip"), "_ray_pkg_0123456789abcdef");
        assert_eq!(dir_name("gcs://../x.zip"), "___x");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn pack_then_unpack_gives_the_files_back(
            tree in proptest::collection::btree_map("[a-z]{1,6}(/[a-z]{1,6}){0,2}\\.py", proptest::collection::vec(any::<u8>(), 0..200), 1..8)
        ) {
            let src = tempfile::tempdir().expect("tmp");
            // A path that is also another's directory cannot be both: keep the first.
            let mut written = Vec::new();
            for (rel, content) in &tree {
                if written.iter().any(|w: &String| rel.starts_with(&format!("{}/", w.trim_end_matches(".py"))) || w.starts_with(&format!("{}/", rel.trim_end_matches(".py")))) {
                    continue;
                }
                write(src.path(), rel, content);
                written.push(rel.clone());
            }
            let first = pack_directory(src.path(), &[]).expect("pack");
            let second = pack_directory(src.path(), &[]).expect("pack");
            prop_assert_eq!(&first, &second);
            let out = tempfile::tempdir().expect("tmp");
            let dest = out.path().join("x");
            unpack(&first.bytes, &dest).expect("unpack");
            prop_assert_eq!(files(&dest), files(src.path()));
        }
    }
}
