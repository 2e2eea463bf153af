//! Output files replaced all at once: each is written to a temporary sibling
//! (`.<name>.partial-<pid>` in the same folder) and renamed over the real path only after it was
//! fully written and synced, so a failed or killed command never leaves a truncated or
//! half-written file where an old one was. A [`StagedFile`] dropped before [`StagedFile::commit`]
//! removes its temporary and leaves the real path untouched.
//!
//! Paths that are not regular files are written in place, as before: a character device or a
//! pipe (`/dev/stdout`, `/dev/null`, a FIFO) cannot be replaced by renaming, and must not be.
//! A symbolic link to a regular file stages next to, and replaces, the link's target.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Component, Path, PathBuf};

/// One output file being written; see the module docs.
#[derive(Debug)]
pub struct StagedFile {
    /// The path the caller named (for messages).
    dest: PathBuf,
    /// Where the finished file goes (the link target for a symbolic link).
    target: PathBuf,
    /// The temporary, or `None` when the file is written in place.
    temp: Option<PathBuf>,
    /// A second handle on the written file, to sync it before the rename.
    handle: File,
}

impl StagedFile {
    /// Create the temporary for `dest` (or open `dest` itself when it is a device or a pipe)
    /// and return it with a handle to write through. Fails at once, before anything is written,
    /// when `dest` is a folder, has no file name, or its folder does not take new files.
    pub fn create(dest: &Path) -> io::Result<(StagedFile, File)> {
        let target = match std::fs::symlink_metadata(dest) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => dest.to_path_buf(),
            Err(e) => return Err(e),
            Ok(m) if m.file_type().is_symlink() => match dest.canonicalize() {
                Ok(real) if real.is_file() => real,
                // A dangling link or one to a device: written through, in place.
                _ => return in_place(dest),
            },
            Ok(m) if m.is_file() => dest.to_path_buf(),
            Ok(m) if m.is_dir() => {
                return Err(io::Error::other("it is a folder, not a file"));
            }
            Ok(_) => return in_place(dest),
        };
        let temp = temp_path(&target)?;
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)?;
        let staged = StagedFile {
            dest: dest.to_path_buf(),
            target,
            temp: Some(temp),
            handle: file.try_clone()?,
        };
        Ok((staged, file))
    }

    /// The path the caller named.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// The temporary being written (`None` when written in place).
    pub fn temp(&self) -> Option<&Path> {
        self.temp.as_deref()
    }

    /// Sync the written file and rename it over the real path. Every writer through the
    /// handle from [`StagedFile::create`] must have been flushed (and may be dropped) before.
    pub fn commit(mut self) -> io::Result<()> {
        let Some(temp) = self.temp.take() else {
            return Ok(());
        };
        let result = self
            .handle
            .sync_all()
            .and_then(|()| std::fs::rename(&temp, &self.target));
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            // Best effort: the real path was never touched either way.
            let _ = std::fs::remove_file(temp);
        }
    }
}

fn in_place(dest: &Path) -> io::Result<(StagedFile, File)> {
    let file = File::create(dest)?;
    let staged = StagedFile {
        dest: dest.to_path_buf(),
        target: dest.to_path_buf(),
        temp: None,
        handle: file.try_clone()?,
    };
    Ok((staged, file))
}

/// `.<name>.partial-<pid>` beside `target`.
pub fn temp_path(target: &Path) -> io::Result<PathBuf> {
    let Some(name) = target.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path names no file",
        ));
    };
    let mut temp = std::ffi::OsString::from(".");
    temp.push(name);
    temp.push(format!(".partial-{}", std::process::id()));
    Ok(target.with_file_name(temp))
}

/// `p` as an absolute path without `.` and `..`: its longest existing ancestor resolved by the
/// file system (symbolic links, `..`), the rest (folders still to be made) folded lexically.
/// `None` only when the current folder is unknown.
pub fn resolve(p: &Path) -> Option<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(p)
    };
    let parts: Vec<Component<'_>> = abs.components().collect();
    for k in (1..=parts.len()).rev() {
        let prefix: PathBuf = parts[..k].iter().collect();
        if let Ok(mut out) = prefix.canonicalize() {
            for c in &parts[k..] {
                match c {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::Normal(n) => out.push(n),
                    Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
                }
            }
            return Some(out);
        }
    }
    Some(abs)
}

/// `a` and `b` name the same file, also when spelled differently (`x` and `./x`, `out/../x`,
/// symlinked folders, folders that do not exist yet).
pub fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((resolve(a), resolve(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    fn scratch(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("gridloop-staged-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_old_file_stays_until_commit_and_is_replaced_whole() {
        let dir = scratch("commit");
        let dest = dir.join("junit.xml");
        std::fs::write(&dest, "old").unwrap();
        let (staged, mut file) = StagedFile::create(&dest).unwrap();
        let temp = staged.temp().unwrap().to_path_buf();
        assert_eq!(
            temp,
            dir.join(format!(".junit.xml.partial-{}", std::process::id()))
        );
        file.write_all(b"new contents").unwrap();
        file.flush().unwrap();
        drop(file);
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "old");
        staged.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "new contents");
        assert_eq!(names(&dir), ["junit.xml"]);
    }

    #[test]
    fn dropped_without_commit_leaves_the_old_file_and_no_temporary() {
        let dir = scratch("drop");
        let dest = dir.join("results.json");
        std::fs::write(&dest, "old").unwrap();
        let (staged, mut file) = StagedFile::create(&dest).unwrap();
        file.write_all(b"half").unwrap();
        drop(staged);
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "old");
        assert_eq!(names(&dir), ["results.json"]);
        // A new file that was never committed does not appear at all.
        let fresh = dir.join("fresh.json");
        drop(StagedFile::create(&fresh).unwrap());
        assert_eq!(names(&dir), ["results.json"]);
    }

    #[test]
    fn folders_and_missing_folders_fail_before_writing() {
        let dir = scratch("fail");
        let e = StagedFile::create(&dir).unwrap_err();
        assert!(e.to_string().contains("folder"), "{e}");
        assert!(StagedFile::create(&dir.join("no/such/x.json")).is_err());
        assert!(StagedFile::create(Path::new("/")).is_err());
        assert!(names(&dir).is_empty());
    }

    #[test]
    fn devices_are_written_in_place_and_links_replace_their_target() {
        let (staged, mut file) = StagedFile::create(Path::new("/dev/null")).unwrap();
        assert!(staged.temp().is_none());
        file.write_all(b"x").unwrap();
        staged.commit().unwrap();
        assert!(!std::fs::metadata("/dev/null").unwrap().is_file());

        let dir = scratch("link");
        let real = dir.join("real.json");
        std::fs::write(&real, "old").unwrap();
        let link = dir.join("link.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let (staged, mut file) = StagedFile::create(&link).unwrap();
        assert_eq!(staged.dest(), link);
        file.write_all(b"new").unwrap();
        staged.commit().unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "new");
        assert_eq!(names(&dir), ["link.json", "real.json"]);
    }

    #[test]
    fn resolve_folds_dots_in_folders_that_do_not_exist_yet() {
        let dir = scratch("resolve");
        let canon = dir.canonicalize().unwrap();
        let want = canon.join("out/junit.xml");
        for spelled in [
            "out/junit.xml",
            "out/./junit.xml",
            "./out/junit.xml",
            "out/sub/../junit.xml",
            "x/../out/junit.xml",
        ] {
            assert_eq!(resolve(&dir.join(spelled)).unwrap(), want, "{spelled}");
        }
        assert!(same_file(
            Path::new("./not-here/junit.xml"),
            Path::new("not-here/junit.xml")
        ));
        assert!(!same_file(
            Path::new("not-here/a.xml"),
            Path::new("not-here/b.xml")
        ));
        // An existing folder reached through a link resolves to the link's target.
        std::fs::create_dir(dir.join("real")).unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("alias")).unwrap();
        assert_eq!(
            resolve(&dir.join("alias/new/../r.json")).unwrap(),
            canon.join("real/r.json")
        );
    }
}
